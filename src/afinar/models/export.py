"""A custom model out of afinar, for the runtimes users deploy on: a GGUF file (llama.cpp,
Ollama, LM Studio) with an Ollama Modelfile beside it, the merged model as safetensors, or the
LoRA adapter.

GGUF is written with the `gguf` package's writer, as llama.cpp's `convert_hf_to_gguf.py` does for
llama-architecture models: its tensor names, the rotary permutation of q/k, the byte-level BPE
tokenizer (tokens, types, merges, special ids) and the chat template. `f16` keeps 2-D weights in
half precision; `q8_0` quantizes them in blocks of 32 (norms stay f32 in both).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from afinar.config import Settings
from afinar.errors import ConfigError, ModelLoadError
from afinar.progress import ProgressCallback, ProgressEvent, null_progress

FORMATS = ("gguf", "safetensors", "adapter")
QUANTS = ("f16", "q8_0")
GGUF_ARCHS = {"llama": "llama"}  # transformers model_type -> gguf architecture


def export_model(name: str, settings: Settings, fmt: str, out: Path, quant: str = "f16",
                 progress: ProgressCallback = null_progress) -> list[Path]:
    """Export custom model `name` (or a model directory) to `out`; the files written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant} is not one of {', '.join(QUANTS)}")
    run = _run_dir(name, settings)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "adapter":
        if not (run / "adapter" / "adapter_config.json").exists():
            raise ConfigError(f"'{name}' has no LoRA adapter (it was trained with method full)",
                              hint="export it with --format safetensors or gguf")
        shutil.copytree(run / "adapter", out / "adapter", dirs_exist_ok=True)
        return sorted(p for p in (out / "adapter").rglob("*") if p.is_file())
    merged = _merged_dir(run, progress)
    if fmt == "safetensors":
        shutil.copytree(merged, out / "merged", dirs_exist_ok=True)
        return sorted(p for p in (out / "merged").rglob("*") if p.is_file())
    stem = Path(name).name if Path(name).is_dir() else name
    gguf_path = out / f"{stem}.{quant}.gguf"
    write_gguf(merged, gguf_path, quant, source_gguf=_source_gguf(run), progress=progress)
    modelfile = out / "Modelfile"
    modelfile.write_text(ollama_modelfile(gguf_path.name, merged), encoding="utf-8")
    return [gguf_path, modelfile]


def _run_dir(name: str, settings: Settings) -> Path:
    from afinar.models.registry import custom_model_record

    rec = custom_model_record(settings, name)
    if rec is not None:
        return Path(rec["model_dir"])
    p = Path(name).expanduser()
    if p.is_dir() and ((p / "afinar_model.json").exists() or (p / "config.json").exists()):
        return p
    raise ConfigError(f"no custom model '{name}'", hint="list them with `afinar models list`; "
                      "or give a run directory")


def _merged_dir(run: Path, progress: ProgressCallback) -> Path:
    """The run's merged model; merged now (and kept) when the run kept only its adapter."""
    if (run / "config.json").exists():
        return run  # a plain model directory
    merged = run / "merged"
    if (merged / "config.json").exists():
        return merged
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise ModelLoadError(f"{run} has neither a merged model nor an adapter")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    progress(ProgressEvent("export", 0, None, message="export: merging the adapter into its base"))
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    tmp = run / "merged.partial"
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(tmp))
    tmp.replace(merged)
    return merged


def _source_gguf(run: Path) -> Path | None:
    """The GGUF file a model's lineage started from (a registry model converted from GGUF), for
    the tokenizer metadata llama.cpp keys on (its pre-tokenizer name)."""
    for meta in (run / "afinar_model.json", run / "merged" / "afinar_source.json",
                 run / "afinar_source.json"):
        if not meta.exists():
            continue
        d = json.loads(meta.read_text(encoding="utf-8"))
        if d.get("gguf"):
            return Path(d["gguf"])
        base = d.get("base_path")
        if base and (Path(base) / "afinar_source.json").exists():
            return _source_gguf(Path(base))
    return None


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """HF's rotate-half q/k rows -> GGML's interleaved rotary layout (llama.cpp's permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(model_dir: Path, path: Path, quant: str = "f16", source_gguf: Path | None = None,
               progress: ProgressCallback = null_progress) -> Path:
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(model_dir))
    arch = GGUF_ARCHS.get(cfg.model_type)
    if arch is None:
        raise ConfigError(f"GGUF export supports {', '.join(GGUF_ARCHS)}-architecture models; "
                          f"this one is '{cfg.model_type}'",
                          hint="export --format safetensors and convert with llama.cpp's "
                               "convert_hf_to_gguf.py")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"GGUF export: rope scaling '{rope.get('rope_type')}' is not "
                          f"supported yet")
    theta = rope.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok_json = json.loads(tok.backend_tokenizer.to_str()) if tok.is_fast else {}
    if (tok_json.get("model") or {}).get("type") != "BPE" or \
            "ByteLevel" not in json.dumps(tok_json.get("pre_tokenizer")):
        raise ConfigError("GGUF export supports byte-level BPE tokenizers (GPT-2 style, as "
                          "SmolLM2, Llama 3 and Qwen use); this tokenizer is not one",
                          hint="export --format safetensors and convert with llama.cpp")

    progress(ProgressEvent("export", 0, 3, message="loading the merged model"))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    n_vocab = cfg.vocab_size

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(path.stem)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16"
                    else gguf.LlamaFileType.MOSTLY_Q8_0)

    # tokenizer: every id up to the embedding size, padding ids the tokenizer lacks
    progress(ProgressEvent("export", 1, 3, message="writing the tokenizer"))
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_name(source_gguf))
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(str(model_dir), load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(w)
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))

    # tensors, named and laid out as llama.cpp expects
    progress(ProgressEvent("export", 2, 3, message=f"writing tensors ({quant})"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelLoadError(f"GGUF export: no llama.cpp name for tensor '{hf_name}'")
        data = t.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        if data.ndim < 2:
            w.add_tensor(name, data.astype(np.float32))
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    progress(ProgressEvent("export", 3, 3, message=f"wrote {path}"))
    return path


def _pre_name(source: Path | None) -> str:
    """llama.cpp picks its pre-tokenizer regex by name: keep the one of the GGUF the model came
    from; 'default' (GPT-2's) otherwise."""
    if source is not None and source.exists():
        import gguf
        f = gguf.GGUFReader(str(source)).fields.get("tokenizer.ggml.pre")
        if f is not None:
            return str(f.contents())
    return "default"


def ollama_modelfile(gguf_name: str, model_dir: Path) -> str:
    """An Ollama Modelfile: FROM the GGUF; for ChatML templates (SmolLM2, Qwen) the same
    template in Ollama's Go syntax and its stop token. Others rely on the chat template inside
    the GGUF, which Ollama reads."""
    lines = [f"FROM ./{gguf_name}", ""]
    tpl_file = model_dir / "chat_template.jinja"
    template = tpl_file.read_text(encoding="utf-8") if tpl_file.exists() else json.loads(
        (model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get(
        "chat_template", "") if (model_dir / "tokenizer_config.json").exists() else ""
    if "<|im_start|>" in (template or ""):
        lines += ['TEMPLATE """{{ if .System }}<|im_start|>system',
                  "{{ .System }}<|im_end|>",
                  "{{ end }}{{ if .Prompt }}<|im_start|>user",
                  "{{ .Prompt }}<|im_end|>",
                  "{{ end }}<|im_start|>assistant",
                  '{{ .Response }}<|im_end|>"""',
                  'PARAMETER stop "<|im_end|>"']
    else:
        lines.append("# the chat template is read from the GGUF file")
    return "\n".join(lines) + "\n"

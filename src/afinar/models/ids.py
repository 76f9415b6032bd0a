"""One model id for everything: every spelling of a model that afinar lists is taken wherever a
model is, and means the same model.

The spellings: a registry id (`smollm2-135m-instruct`), its Bedrock form
(`huggingfacetb.smollm2-135m-instruct`, what ListFoundationModels shows), its hub id
(`HuggingFaceTB/SmolLM2-135M-Instruct`, answered from the local copy), an alias from
`[model_aliases]` and its Bedrock form where the alias is not already `provider.model`
(`tiny` -> `afinar.tiny`), a foundation-model ARN of any of those, a custom model's name, its
custom-model ARN, its OpenAI `ft:` id. `canonical` turns each into the id the registry
resolves; `kind_of` says whether it generates text or embeds it, so an API of the other kind can
say so instead of failing to load it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path

from afinar.config import Settings

# botocore's BedrockModelId pattern (FoundationModelSummary.modelId, baseModelName, ...)
BEDROCK_MODEL_ID = re.compile(
    r"[a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([a-z0-9-]{1,63}[.]){0,2}[a-z0-9-]{1,63}"
    r"([:][a-z0-9-]{1,63}){0,2}(/[a-z0-9]{12}|)")
LOCAL_PROVIDER = "afinar"  # the provider part of a Bedrock id made for a local name


def slug(s: str) -> str:
    out = "".join(c if c.isalnum() and c.isascii() else "-" for c in s.lower()).strip("-")
    return out[:63] or "model"


def short_id(seed: str | None = None) -> str:
    """12 lower-case letters and digits (Bedrock's ARN suffixes): random, or from a seed."""
    if seed is None:
        return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    return hashlib.sha256(seed.encode()).hexdigest()[:12]


def builtin_bedrock_id(registry_id: str) -> str:
    """A registry model as Bedrock spells foundation models: provider.model."""
    from afinar.models.registry import BUILTIN_MODELS

    e = BUILTIN_MODELS[registry_id]
    return f"{e.provider.lower().replace('-', '')}.{registry_id}"


def bedrock_model_id(ident: str) -> str:
    """How boto3 sees a model id: a registry model in its provider.model form, an id that is
    already one as it is, any other name as `afinar.<name>`."""
    from afinar.models.registry import BUILTIN_MODELS

    if ident in BUILTIN_MODELS:
        return builtin_bedrock_id(ident)
    if BEDROCK_MODEL_ID.fullmatch(ident):
        return ident
    return f"{LOCAL_PROVIDER}.{slug(ident)}"


def foundation_arn(settings: Settings, model_id: str) -> str:
    return f"arn:aws:bedrock:{settings.region}::foundation-model/{model_id}"


def custom_model_arn(settings: Settings, rec: dict) -> str:
    """A custom model's ARN: the one its job recorded, else one made from its name."""
    return rec.get("arn") or (
        f"arn:aws:bedrock:{settings.region}:{settings.account_id}:custom-model/"
        f"{LOCAL_PROVIDER}.{slug(rec.get('base_model') or 'custom')}/{short_id(rec['name'])}")


def canonical(ident: str, settings: Settings) -> str:
    """Any listed spelling of a model -> the id the registry resolves (unchanged when it is
    not a spelling afinar made)."""
    from afinar.models.registry import BUILTIN_MODELS, list_custom_models

    s = ident.strip() if isinstance(ident, str) else ident
    if not isinstance(s, str) or not s:
        return ident
    if s.startswith("arn:") and ":custom-model/" in s:
        for rec in list_custom_models(settings):
            if custom_model_arn(settings, rec) == s:
                return rec["name"]
        return s
    if s.startswith("arn:") and ":foundation-model/" in s:
        s = s.rsplit(":foundation-model/", 1)[1]
    if s in BUILTIN_MODELS or s in settings.model_aliases:
        return s
    for rid, e in BUILTIN_MODELS.items():
        if s == builtin_bedrock_id(rid) or s.lower() == e.hub_id.lower():
            return rid  # its Bedrock form, or its hub id (served from the local copy)
    if s.startswith(f"{LOCAL_PROVIDER}."):
        for alias in settings.model_aliases:
            if bedrock_model_id(alias) == s:
                return alias
        from afinar.models.registry import custom_model_record
        if custom_model_record(settings, s[len(LOCAL_PROVIDER) + 1:]) is not None:
            return s[len(LOCAL_PROVIDER) + 1:]  # afinar.<custom model>: a provider.model id
    return s


def kind_of(ident: str, settings: Settings) -> str | None:
    """"generative", "encoder" (embeddings) or "classifier" for a model afinar knows by this id
    (aliases followed); None when it cannot tell without loading it."""
    from afinar.models.registry import BUILTIN_MODELS, custom_model_record

    seen = set()
    s = canonical(ident, settings)
    while s in settings.model_aliases and s not in seen:
        seen.add(s)
        s = canonical(settings.model_aliases[s], settings)
    if s in BUILTIN_MODELS:
        return "encoder" if BUILTIN_MODELS[s].kind == "encoder" else "generative"
    rec = custom_model_record(settings, s)
    if rec is not None:
        return "classifier" if rec.get("type") == "classify" else "generative"
    if seen:  # an alias: a folder's config says what it is; else a generative model (what
        # aliases map: cloud model ids to local models)
        return _folder_kind(Path(s).expanduser()) or "generative"
    return None


def _folder_kind(p: Path) -> str | None:
    try:
        c = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return None
    arch = " ".join(c.get("architectures") or [])
    if "ForCausalLM" in arch or "ForConditionalGeneration" in arch:
        return "generative"
    if "ForSequenceClassification" in arch:
        return "classifier"
    if (p / "modules.json").exists() or arch.endswith("Model"):
        return "encoder"  # a sentence-transformers folder or a bare encoder
    return None


def listed(settings: Settings, kind: str) -> list[str]:
    """The ids of one kind that afinar lists, for the hint of a refusal."""
    from afinar.models.registry import available_identifiers

    return [i for i in available_identifiers(settings) if kind_of(i, settings) in (kind, None)]

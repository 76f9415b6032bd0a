"""Load tokenizers and causal LMs (base or custom, with or without a LoRA adapter)."""

from __future__ import annotations

from pathlib import Path

import torch

from afinar.errors import ModelLoadError
from afinar.models.registry import ResolvedModel


def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelLoadError(f"cannot load tokenizer from '{path}': {e}",
                             hint="a hub id needs network access or a filled HF cache; "
                                  "a local directory needs tokenizer files") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelLoadError(f"cannot load model from '{path}': {e}",
                             hint="a hub id needs network access or a filled HF cache") from e
    return model.to(device)


def load_for_inference(resolved: ResolvedModel, dtype: torch.dtype = torch.float32,
                       device: str = "cpu"):
    """Model and left-padding tokenizer, ready for `generate`. Adapter dirs are applied on load."""
    adapter_only = resolved.adapter_path and not (Path(resolved.path) / "config.json").exists()
    if resolved.kind == "adapter" or adapter_only:  # a custom model saved without --merge
        from peft import PeftModel

        if not resolved.base:
            raise ModelLoadError(f"adapter '{resolved.path}' does not name its base model",
                                 hint="set base_model_name_or_path in adapter_config.json")
        base = load_causal_lm(resolved.base, dtype, device)
        adapter = resolved.adapter_path or resolved.path
        model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        tok_dir = adapter if (Path(adapter) / "tokenizer_config.json").exists() \
            else resolved.base
    else:
        model = load_causal_lm(resolved.path, dtype, device)
        tok_dir = resolved.path
    model.eval()
    return model, load_tokenizer(tok_dir, padding_side="left")

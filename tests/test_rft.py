"""Reinforcement fine-tuning (GRPO) with graders, on a tiny model built in code."""

from __future__ import annotations

import json

import pytest

from afinar.errors import ConfigError, DataError
from afinar.training.config import parse_train_config
from afinar.training.trainer import train

from conftest import COLORS, THINGS, write_jsonl


def prompts(n: int, answer: str | None = "blue") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Colour of {THINGS[i % 4]}?"}],
             **({"reference_answer": answer} if answer else {})} for i in range(n)]


def _cfg(tmp_path, base, rows, **kw):
    values = {"type": "rft", "train_data": str(write_jsonl(tmp_path / "rft.jsonl", rows)),
              "base_model": str(base), "output_dir": str(tmp_path / "rft"), "name": "tiny-rft",
              "method": "full", "grader": "exact", "learning_rate": 1e-3, "epochs": 2,
              "batch_size": 4, "samples_per_prompt": 8, "max_new_tokens": 4,
              "warmup_steps": 0, "checkpoint_every": 0, "precision": "fp32", "threads": 2}
    values.update(kw)
    return parse_train_config(values)


def test_grpo_with_an_exact_match_grader_raises_the_reward(tmp_path, tiny_model_dir, settings):
    """A tiny model fine-tuned to answer any thing's colour with one of four colours at random;
    rewarding the answer 'blue' (exact match; the RL run trains on no labelled answer) makes
    it say blue more."""
    uniform = [{"prompt": f"Colour of {THINGS[i % 4]}?", "completion": COLORS[(i // 4) % 4]}
               for i in range(64)]
    sft = parse_train_config({
        "train_data": str(write_jsonl(tmp_path / "sft.jsonl", uniform)),
        "base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "sft"),
        "name": "tiny-sft", "method": "full", "epochs": 4, "batch_size": 8,
        "learning_rate": 1e-2, "warmup_steps": 0, "checkpoint_every": 0,
        "precision": "fp32", "validation_split": 0})
    start = train(sft, settings)
    res = train(_cfg(tmp_path, start.model_dir, prompts(64), validation_data=str(
        write_jsonl(tmp_path / "val.jsonl", prompts(4))), eval_every=8, epochs=3), settings)
    assert res.status == "completed" and res.steps == 48
    log = [json.loads(x) for x in (res.output_dir / "training_artifacts" /
                                   "training_log.jsonl").read_text().splitlines()]
    rewards = [r["mean_reward"] for r in log if r["kind"] == "train"]
    assert {"reward_spread", "answer_length"} <= set(log[0])
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.15, rewards  # measured: ~0.1 -> ~0.3 in 32 steps
    assert 0 <= res.validation["mean_reward"] <= 1


def test_bad_rft_inputs_fail_before_training(tmp_path, tiny_model_dir, settings):
    # the grader reads item.reference_answer, which line 3 lacks
    rows = prompts(2) + prompts(1, answer=None) + [{"messages": []}]
    with pytest.raises(DataError) as e:
        train(_cfg(tmp_path, tiny_model_dir, rows), settings)
    msg = str(e.value)
    assert "line 3" in msg and "reference_answer" in msg and "line 4" in msg, msg
    with pytest.raises(ConfigError, match="unknown grader"):
        train(_cfg(tmp_path, tiny_model_dir, prompts(4), grader="nope"), settings)
    with pytest.raises(ConfigError, match="set type=rft"):
        parse_train_config({"train_data": "x", "samples_per_prompt": 4})
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        parse_train_config({"train_data": "x", "type": "rft", "trainingSamplePerPrompt": 1})
    with pytest.raises(ConfigError, match="kl_coef needs method=lora"):
        parse_train_config({"train_data": "x", "type": "rft", "method": "full",
                            "kl_coef": 0.1})
    assert not (tmp_path / "rft").exists()

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
    assert {"reward_spread", "best_reward", "answer_length", "cut_share"} <= set(log[0])
    assert all(r["best_reward"] >= r["mean_reward"] for r in log if r["kind"] == "train")
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
    # a reference answer the sampled answers cannot reach (4 new tokens) is refused by line
    long = prompts(2) + prompts(1, answer="blue " * 8)
    with pytest.raises(DataError) as e:
        train(_cfg(tmp_path, tiny_model_dir, long), settings)
    msg = str(e.value)
    assert "line 3" in msg and "max_new_tokens=4" in msg and "line 1" not in msg, msg
    assert "raise max_new_tokens to at least" in msg, msg
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


def test_the_engine_samples_from_the_live_policy(tiny_model_dir, tokenizer, settings):
    """RFT samples through the serving engine, serving the module being trained: greedy
    answers are transformers' greedy answers, before and after the weights change; seeded
    sampling repeats; each answer keeps its token ids."""
    import contextlib

    import torch

    from afinar.models.loading import load_causal_lm
    from afinar.training.batching import left_pad
    from afinar.training.rft import Prompt, Sampler

    model = load_causal_lm(str(tiny_model_dir), torch.float32, "cpu")
    model.train()
    prompts = [Prompt(tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Colour of {t}?"}], add_generation_prompt=True,
        tokenize=True, return_dict=False), {}, i) for i, t in enumerate(THINGS)]

    def hf_greedy() -> list[list[int]]:
        ids, mask = left_pad([p.ids for p in prompts], tokenizer.pad_token_id)
        model.eval()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        model.train()
        got = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id),
                       len(row))
            got.append(row[:cut])
        return got

    sampler = Sampler(model, tokenizer, settings, 16, 6, 512, contextlib.nullcontext, seed=3)
    try:
        rows, greedy, _ = sampler.sample(prompts, 1, 6, 0.0)
        assert rows == [p.ids for p in prompts] and greedy == hf_greedy()
        assert model.training  # put back in training mode
        with torch.no_grad():  # new weights (as after a step): the engine answers with them
            model.model.norm.weight.mul_(-1)  # negated logits: the likeliest token is now last
        _, after, _ = sampler.sample(prompts, 1, 6, 0.0)
        assert after == hf_greedy() and after != greedy
        _, drawn, cut = sampler.sample(prompts, 4, 6, 1.0)
        assert len(drawn) == 16 and len({tuple(a) for a in drawn}) > 4
        # cut: the answers that reached the 6-token limit without ending their turn
        assert cut == sum(len(a) == 6 and a[-1] != tokenizer.eos_token_id for a in drawn)
    finally:
        sampler.close()
    again = Sampler(model, tokenizer, settings, 16, 6, 512, contextlib.nullcontext, seed=3)
    try:
        again.sample(prompts, 1, 6, 0.0)  # same calls, same seeds
        again.sample(prompts, 1, 6, 0.0)
        assert again.sample(prompts, 4, 6, 1.0)[1] == drawn
    finally:
        again.close()

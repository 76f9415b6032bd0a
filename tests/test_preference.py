"""Preference tuning (DPO, IPO, hinge, ORPO) on a tiny model built in code."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from afinar.errors import ConfigError, DataError
from afinar.training.config import parse_train_config
from afinar.training.trainer import train

from conftest import COLORS, THINGS, mapping_rows, write_jsonl


def pair_rows(n: int, offset: int = 1) -> list[dict]:
    """Colour of <thing>? - the right colour preferred over another one."""
    return [{"prompt": f"Colour of {THINGS[i % 4]}?", "chosen": COLORS[i % 4],
             "rejected": COLORS[(i + offset) % 4]} for i in range(n)]


def openai_rows(n: int, offset: int = 2) -> list[dict]:
    return [{"input": {"messages": [{"role": "user", "content": r["prompt"]}]},
             "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
             "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}]}
            for r in pair_rows(n, offset)]


def _cfg(tmp_path, model, rows, **kw):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = {"type": "dpo", "train_data": str(data), "base_model": str(model),
            "output_dir": str(tmp_path / "run"), "name": "tiny-dpo", "method": "full",
            "epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 0,
            "checkpoint_every": 0, "precision": "fp32", "threads": 2}
    base.update(kw)
    return parse_train_config(base)


def _margins(model_dir, tokenizer_dir, rows) -> list[float]:
    """log p(preferred) - log p(non-preferred) under a saved model, pair by pair."""
    from afinar.data.readers import read_records
    from afinar.models.loading import load_causal_lm, load_tokenizer
    from afinar.training.preference import collate_pairs, prepare_pairs, sequence_logps

    tok = load_tokenizer(str(tokenizer_dir))
    data = prepare_pairs(str(rows), tok, 64)
    model = load_causal_lm(str(model_dir), torch.float32, "cpu").eval()
    b = collate_pairs(data.encoded, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = sequence_logps(model, b["input_ids"], b["labels"], b["attention_mask"])
    n = len(data.encoded)
    assert n == len(read_records(str(rows)).records)
    return (lp[:n] - lp[n:]).tolist()


def test_sequence_logps_equal_the_full_forward(tiny_model_dir, tokenizer):
    """The answer-only log-probs (output layer on answer tokens only) equal log_softmax over a
    plain forward's logits, row by row, with padding."""
    from afinar.data.schema import Example
    from afinar.models.loading import load_causal_lm
    from afinar.training.preference import Pair, _encode_side, collate_pairs, sequence_logps

    ex = Example(1, "preference", [{"role": "user", "content": "Colour of sky?"},
                                   {"role": "assistant", "content": "blue"}],
                 rejected=[{"role": "user", "content": "Colour of sky?"},
                           {"role": "assistant", "content": "a much longer wrong answer"}])
    pair = Pair(_encode_side(tokenizer, ex, ex.messages, 1, 64),
                _encode_side(tokenizer, ex, ex.rejected, 1, 64), 1)
    model = load_causal_lm(str(tiny_model_dir), torch.float32, "cpu").eval()
    b = collate_pairs([pair], tokenizer.pad_token_id)
    with torch.no_grad():
        got, n = sequence_logps(model, b["input_ids"], b["labels"], b["attention_mask"])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    lp = logits[:, :-1].log_softmax(-1)
    y = b["labels"][:, 1:]
    mask = y != -100
    want = (lp.gather(2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # only the answers are labelled (as for sft): "blue", end of turn, newline; the longer one
    assert n[0] < n[1] and int(n[0]) == len(tokenizer("blue<|im_end|>\n",
                                                      add_special_tokens=False)["input_ids"])


def test_sft_weight_adds_the_preferred_answers_nll(tiny_model_dir, tokenizer, tmp_path):
    from afinar.models.loading import load_causal_lm
    from afinar.training.preference import (
        PreferenceLoss,
        collate_pairs,
        prepare_pairs,
        sequence_logps,
    )

    data = prepare_pairs(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(4))), tokenizer, 64)
    b = collate_pairs(data.encoded, tokenizer.pad_token_id)
    model = load_causal_lm(str(tiny_model_dir), torch.float32, "cpu").eval()
    with torch.no_grad():
        lp, n = sequence_logps(model, b["input_ids"], b["labels"], b["attention_mask"])
        ref = lp + 0.5  # any reference
        plain = PreferenceLoss(model, "dpo", 0.1)(b["input_ids"], b["labels"], None, ref)
        rpo = PreferenceLoss(model, "dpo", 0.1, 2.0)(b["input_ids"], b["labels"], None, ref)
    nll = -(lp[:4] / n[:4]).sum()
    torch.testing.assert_close(rpo[0] - plain[0], 2.0 * nll, rtol=1e-4, atol=1e-4)
    assert rpo[2:] == plain[2:]  # rewards (accuracy, margin) are the preference's alone


def test_dpo_moves_the_policy_toward_the_preferred_answers(tmp_path, tiny_model_dir,
                                                           tokenizer_dir, settings):
    # validation in OpenAI's preference format, with other non-preferred answers than training
    val = write_jsonl(tmp_path / "val.jsonl", openai_rows(8))
    res = train(_cfg(tmp_path, tiny_model_dir, pair_rows(64), validation_data=str(val)),
                settings)
    assert res.status == "completed" and res.steps == 32
    assert res.train_loss < res.first_loss - 0.1  # -log sigmoid(0) = 0.693 at the start
    v = res.validation
    assert v["reward_accuracy"] == 1.0 and v["reward_margin"] > 0.1, v
    before = _margins(tiny_model_dir, tokenizer_dir, val)
    after = _margins(res.model_dir, tokenizer_dir, val)
    assert all(a > b + 0.5 for a, b in zip(after, before, strict=True)), (before, after)
    # metrics in the usual layout: reward accuracy and margin per step and validation
    log = [json.loads(x) for x in (res.output_dir / "training_artifacts" /
                                   "training_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 32 and {"reward_accuracy", "reward_margin"} <= set(steps[-1])
    assert [r for r in log if r["kind"] == "validation"][-1]["reward_accuracy"] == 1.0
    rows = list(csv.DictReader(open(res.output_dir / "validation_artifacts" /
                                    "post_fine_tuning_validation" / "validation_metrics.csv")))
    assert float(rows[-1]["validation_loss"]) == pytest.approx(v["validation_loss"], rel=1e-4)
    card = json.loads((res.output_dir / "afinar_model.json").read_text())
    assert card["hyperparameters"]["type"] == "dpo" and card["hyperparameters"]["loss"] == "dpo"


def test_orpo_learns_the_mapping_from_a_base_model(tmp_path, tiny_model_dir, settings):
    """ORPO needs no reference and no SFT start: it also raises the preferred answers'
    likelihood, so a random model learns to answer."""
    from afinar.inference.generate import generate, load

    # (at lr 1e-2 this random 64-wide model stalls with three colours confused: measured)
    res = train(_cfg(tmp_path, tiny_model_dir, pair_rows(160), loss="orpo", epochs=8,
                     learning_rate=5e-3, validation_data=str(
                         write_jsonl(tmp_path / "v.jsonl", openai_rows(8)))), settings)
    assert res.validation["reward_accuracy"] == 1.0, res
    prompts = [[{"role": "user", "content": f"Colour of {t}?"}] for t in THINGS]
    tuned = generate(load("tiny-dpo", settings, precision="fp32"), prompts, max_new_tokens=4)
    assert tuned == COLORS, (res, tuned)


@pytest.mark.parametrize("loss", ["ipo", "hinge"])
def test_other_losses_rank_the_pairs(tmp_path, tiny_model_dir, settings, loss):
    # validated on pairs like training's: IPO and hinge stop pushing once a pair's margin
    # reaches their target, so on this toy they rank unseen non-preferred answers less surely
    res = train(_cfg(tmp_path, tiny_model_dir, pair_rows(64), loss=loss,
                     validation_data=str(write_jsonl(tmp_path / "v.jsonl",
                                                     openai_rows(8, 1)))),
                settings)
    assert res.train_loss < res.first_loss and res.validation["reward_accuracy"] == 1.0, res


def test_dpo_resume_equals_uninterrupted(tmp_path, tiny_model_dir, settings):
    """The reference log-probs are those of the starting model, also when resuming."""
    from safetensors.torch import load_file

    kw = {"method": "lora", "learning_rate": 5e-2, "checkpoint_every": 3, "epochs": 2}
    a = train(_cfg(tmp_path / "a", tiny_model_dir, pair_rows(48), **kw), settings)
    calls = {"n": 0}

    def stop_at_4():
        calls["n"] += 1
        return calls["n"] == 4

    cfg = _cfg(tmp_path / "b", tiny_model_dir, pair_rows(48), **kw)
    assert train(cfg, settings, should_stop=stop_at_4).status == "stopped"
    b = train(cfg, settings, resume=True)
    assert b.steps == a.steps and b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
    for run in ("a", "b"):
        assert (tmp_path / run / "run" / "checkpoints").exists()
    wa, wb = [load_file(str(sorted((tmp_path / r / "run" / "checkpoints").glob("step-*"))[-1]
                            / "trainable.safetensors")) for r in ("a", "b")]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_bad_preference_runs_fail_before_training(tmp_path, tiny_model_dir, settings):
    sft = write_jsonl(tmp_path / "sft.jsonl", mapping_rows(8))
    with pytest.raises(DataError, match="prompt_completion") as e:
        train(_cfg(tmp_path, tiny_model_dir, [], train_data=str(sft)), settings)
    assert "preference tuning needs pairs" in str(e.value)
    bad = pair_rows(8) + [{"prompt": "Colour of sky?", "chosen": "blue"}]
    with pytest.raises(DataError, match="line 9") as e:
        train(_cfg(tmp_path, tiny_model_dir, bad), settings)
    assert "rejected" in str(e.value)
    pairs = write_jsonl(tmp_path / "p.jsonl", pair_rows(8))
    sft_cfg = parse_train_config({"train_data": str(pairs), "base_model": str(tiny_model_dir),
                                  "output_dir": str(tmp_path / "sft-run")})
    with pytest.raises(DataError, match="preference") as e:
        train(sft_cfg, settings)
    assert "--type dpo" in str(e.value)
    with pytest.raises(ConfigError, match="set type=dpo"):
        parse_train_config({"train_data": "x", "beta": 0.2})
    with pytest.raises(ConfigError, match="packed"):
        parse_train_config({"train_data": "x", "type": "dpo", "grouping": "packed"})
    with pytest.raises(ConfigError, match="orpo has its own"):
        parse_train_config({"train_data": "x", "type": "dpo", "loss": "orpo",
                            "sft_weight": 1})
    with pytest.raises(ConfigError, match="beta"):
        parse_train_config({"train_data": "x", "type": "dpo", "beta": 0})
    assert not (tmp_path / "run").exists()  # nothing was started

"""Continued pre-training: corpora streamed into packed blocks with document boundaries kept,
held-out perplexity before and after, chaining CPT -> fine-tuning."""

from __future__ import annotations

import csv
import json
import random

import pytest

from afinar.data.corpus import prepare_corpus
from afinar.errors import DataError
from afinar.training.config import parse_train_config
from afinar.training.trainer import train

from conftest import mapping_rows, write_jsonl


def _language(n: int, seed: int) -> list[str]:
    """A tiny synthetic language: strict subject-verb-object sentences."""
    rng = random.Random(seed)
    subj, verb, obj = ["the cat", "a dog", "my bird"], ["sees", "likes", "eats"], [
        "the fish", "a bone", "some seed"]
    return [" ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}."
                     for _ in range(rng.randint(3, 8))) for _ in range(n)]


def test_blocks_keep_document_boundaries(tmp_path, tokenizer):
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota kappa"]
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text(docs[0])
    (src / "b.md").write_text(docs[1])
    write_jsonl(src / "c.jsonl", [{"input": docs[2]}])
    c = prepare_corpus(str(src), tokenizer, 8, tmp_path / "tok")
    eos = tokenizer.eos_token_id
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] + [eos] for d in docs]
    stream = [t for d in ids for t in d]
    assert c.n_documents == 3 and c.n_tokens_total == len(stream)
    assert len(c.encoded) == len(stream) // 8
    got = [t for i in range(len(c.encoded)) for t in c.encoded[i].input_ids]
    assert got == stream[: len(got)]  # in order, EOS after each document
    b0 = c.encoded[0]
    assert b0.labels == b0.input_ids and len(b0) == 8
    first_eos = b0.input_ids.index(eos)
    assert b0.position_ids[: first_eos + 2] == list(range(first_eos + 1)) + [0]
    if len(stream) % 8:
        assert any("do not fill a block" in w for w in c.warnings)


@pytest.mark.parametrize("lines, match", [
    ([], "empty"),
    (['{"input": ""}'], "line 1 field 'input'"),
    (['{"text": "ok"}', '{oops', '{"body": "x"}'], "line 2"),
])
def test_bad_corpora(tmp_path, tokenizer, lines, match):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(DataError, match=match) as e:
        prepare_corpus(str(p), tokenizer, 16, tmp_path / "tok")
    if len(lines) == 3:
        assert "line 3" in str(e.value)  # every problem, not only the first


def test_cpt_lowers_held_out_perplexity_and_chains(tmp_path, tiny_model_dir, settings):
    train_p = write_jsonl(tmp_path / "train.jsonl", [{"input": t} for t in _language(80, 1)])
    held = tmp_path / "held"
    held.mkdir()
    for i, t in enumerate(_language(10, 2)):
        (held / f"doc{i}.txt").write_text(t)
    cfg = parse_train_config({
        "type": "cpt", "train_data": str(train_p), "validation_data": str(held),
        "base_model": str(tiny_model_dir), "method": "full", "max_length": 64, "epochs": 3,
        "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 0, "checkpoint_every": 5,
        "name": "cpt-run", "output_dir": str(tmp_path / "cpt"), "threads": 2})
    res = train(cfg, settings)
    before, after = res.initial_validation["perplexity"], res.validation["perplexity"]
    assert after < before / 5, (before, after)
    rows = list(csv.DictReader((tmp_path / "cpt" / "validation_artifacts" /
                                "post_fine_tuning_validation" / "validation_metrics.csv").open()))
    steps = [int(r["step_number"]) for r in rows]
    assert steps[0] == 0 and steps[-1] == res.steps and len(steps) >= 3  # a curve

    ft = parse_train_config({
        "train_data": str(write_jsonl(tmp_path / "ft.jsonl", mapping_rows(32))),
        "base_model": "cpt-run", "epochs": 1, "learning_rate": 1e-2, "name": "cpt-then-ft",
        "output_dir": str(tmp_path / "ft"), "threads": 2, "checkpoint_every": 0})
    train(ft, settings)
    rec = json.loads((settings.custom_models_dir / "cpt-then-ft.json").read_text())
    assert rec["lineage"] == [str(tiny_model_dir), "cpt-run", "cpt-then-ft"]


def test_cpt_demo_pipeline_on_tiny_model(tmp_path, tiny_model_dir, settings):
    from afinar.demo.cpt import CptDemoOptions, run_cpt_demo

    said = []
    opts = CptDemoOptions(chars_per_module=400, block_size=64, batch_size=8,
                          learning_rate=3e-3, lora_layers=None, checkpoint_every=3,
                          base_model=str(tiny_model_dir), output_dir=str(tmp_path / "demo"))
    rep = run_cpt_demo(opts, settings, say=said.append)
    held = rep["modules"]["held_out"]
    assert "abc" in held and not set(held) & set(rep["modules"]["train"])
    hp = rep["held_out_perplexity"]
    assert hp["after"] < hp["before"]  # a random tiny model learns the pages' shape
    assert rep["curve"][0]["step"] == 0 and len(rep["curve"]) >= 3
    assert "Held-out perplexity" in (tmp_path / "demo" / "report.md").read_text()
    assert said[-1].startswith("[3/3]")


def test_from_scratch_with_bpe_learns_a_synthetic_language(tmp_path, settings):
    from afinar.inference.generate import load

    train_p = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in _language(300, 5)])
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": t} for t in _language(20, 6)])
    cfg = parse_train_config({
        "type": "cpt", "scratch_size": "tiny", "tokenizer": "bpe", "vocab_size": 400,
        "method": "full", "train_data": str(train_p), "validation_data": str(held),
        "max_length": 64, "epochs": 3, "batch_size": 16, "learning_rate": 3e-3,
        "warmup_steps": 5, "checkpoint_every": 0, "name": "scratch-run",
        "output_dir": str(tmp_path / "run"), "threads": 2})
    res = train(cfg, settings)
    before, after = res.initial_validation["perplexity"], res.validation["perplexity"]
    # near-uniform over the 400-token vocabulary before; the grammar's few choices after
    assert before > 200 and after < 8, (before, after)
    rec = json.loads((settings.custom_models_dir / "scratch-run.json").read_text())
    assert rec["base_model"] == "scratch:tiny" and rec["lineage"][0] == "scratch:tiny"
    model = load("scratch-run", settings)
    assert len(model.tokenizer) <= 400 + 1
    with pytest.raises(Exception, match="method=full"):
        parse_train_config({"type": "cpt", "scratch_size": "tiny", "train_data": "x"})


def test_cpt_resume_equals_uninterrupted(tmp_path, tiny_model_dir, settings):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"input": t} for t in _language(60, 9)])

    def cfg(name):
        return parse_train_config({
            "type": "cpt", "train_data": str(corpus), "base_model": str(tiny_model_dir),
            "max_length": 32, "epochs": 2, "batch_size": 8, "learning_rate": 5e-3,
            "checkpoint_every": 3, "output_dir": str(tmp_path / name), "name": name,
            "threads": 2})

    a = train(cfg("a"), settings)
    n = {"calls": 0}

    def stop_at_4():
        n["calls"] += 1
        return n["calls"] == 4

    b1 = train(cfg("b"), settings, should_stop=stop_at_4)
    assert b1.status == "stopped" and b1.steps == 4
    b2 = train(cfg("b"), settings, resume=True)
    assert b2.steps == a.steps and b2.train_loss == pytest.approx(a.train_loss, rel=1e-5)

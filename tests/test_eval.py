"""Evaluation metrics and the side-by-side comparison."""

from __future__ import annotations

import pytest

from afinar.eval.compare import evaluate, write_report
from afinar.eval.metrics import exact_match, field_accuracy, rouge_l, score_pairs

from conftest import mapping_rows, write_jsonl

REF = '{"api_call": "stripe.subscriptions.create", "parameters": {"amount": 9900, "customer": "cus_1"}}'


def test_exact_match_json_ignores_order_and_spacing():
    assert exact_match('{"parameters": {"customer": "cus_1", "amount": 9900}, '
                       '"api_call": "stripe.subscriptions.create"}', REF)
    assert not exact_match(REF.replace("9900", "99"), REF)
    assert exact_match("  hola   mundo ", "hola mundo") and not exact_match("hola", "adiós")


def test_field_accuracy_and_validity():
    assert field_accuracy(REF, REF) == 1.0
    assert field_accuracy(REF.replace("9900", "99"), REF) == pytest.approx(2 / 3)
    assert field_accuracy("not json", REF) == 0.0
    assert field_accuracy("x", "plain text") is None
    agg, per = score_pairs([REF, "nope"], [REF, REF])
    assert agg["exact_match"] == 0.5 and agg["valid_json"] == 0.5
    assert per[1]["field_accuracy"] == 0.0


def test_rouge_l_unicode():
    assert rouge_l("la suscripción mensual", "la suscripción mensual") == 1.0
    assert 0 < rouge_l("suscripción anual", "la suscripción mensual") < 1


def test_evaluate_two_models_reports_differences(tmp_path, settings, tiny_model_dir):
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    data = write_jsonl(tmp_path / "t.jsonl", mapping_rows(160))
    train(parse_train_config({"train_data": str(data), "base_model": str(tiny_model_dir),
                              "method": "full", "epochs": 8, "learning_rate": 1e-2,
                              "name": "colors", "output_dir": str(tmp_path / "run"),
                              "checkpoint_every": 0}), settings)
    test = write_jsonl(tmp_path / "test.jsonl", mapping_rows(8))
    rep = evaluate([str(tiny_model_dir), "colors"], str(test), settings, max_new_tokens=4)
    base, tuned = (m["metrics"] for m in rep["models"])
    assert tuned["exact_match"] == 1.0 and base["exact_match"] < 0.5
    assert rep["differences"] and len(rep["examples"]) == 8
    paths = write_report(rep, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "Examples where the models differ" in md and "colors" in md

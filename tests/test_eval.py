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
                              "checkpoint_every": 0, "precision": "fp32",
                              "validation_split": 0}), settings)
    test = write_jsonl(tmp_path / "test.jsonl", mapping_rows(8))
    # fp32: on a CPU with fast bf16 a 64-wide random model's margins are within bf16 rounding
    rep = evaluate([str(tiny_model_dir), "colors"], str(test), settings, max_new_tokens=4,
                   precision="fp32")
    base, tuned = (m["metrics"] for m in rep["models"])
    assert tuned["exact_match"] == 1.0 and base["exact_match"] < 0.5
    assert rep["differences"] and len(rep["examples"]) == 8
    paths = write_report(rep, tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "Examples where the models differ" in md and "colors" in md


def test_classification_metrics_hand_made():
    from afinar.eval.classification import classification_metrics

    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["majority_baseline"] == pytest.approx(0.4)


def test_text_perplexity_eval_and_html_report(tmp_path, tiny_model_dir, settings):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afinar.eval.compare import evaluate, write_report

    docs = ["the cat sees the fish.", "a dog likes a bone and the bird eats seed."]
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": d} for d in docs])
    rep = evaluate([str(tiny_model_dir)], str(data), settings, precision="fp32")
    assert rep["task"] == "text"
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    nll, n = 0.0, 0
    with torch.no_grad():
        for d in docs:  # the definition, by hand
            ids = tok(d, add_special_tokens=False, return_tensors="pt")["input_ids"]
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    assert rep["models"][0]["metrics"]["perplexity"] == pytest.approx(math.exp(nll / n),
                                                                      rel=1e-4)
    paths = write_report(rep, tmp_path / "rep", "ppl")
    page = paths["html"].read_text()
    assert "perplexity" in page and "data:image/png;base64," in page

"""Graders (eval/graders.py): OpenAI's grader objects and afinar's JSON graders."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from afinar.eval.graders import GraderError, build_grader, load_grader

REF = {"api_call": "stripe.refunds.create", "parameters": {"charge": "ch_1", "amount": 500}}
ITEM = {"reference_answer": json.dumps(REF), "expected_call": "stripe.refunds.create"}


def test_string_checks_and_templates():
    eq = build_grader({"type": "string_check", "input": "{{sample.output_json.api_call}}",
                       "reference": "{{item.expected_call}}", "operation": "eq"})
    assert eq.grade(json.dumps(REF), ITEM) == 1.0
    assert eq.grade('{"api_call": "stripe.charges.create"}', ITEM) == 0.0
    like = build_grader({"type": "string_check", "reference": "Refund", "operation": "ilike"})
    assert like.grade("refund issued", ITEM) == 1.0
    assert build_grader("exact").grade(" yes ", {"reference_answer": "yes"}) == 1.0


def test_json_graders():
    same_other_order = json.dumps({"parameters": {"amount": 500, "charge": "ch_1"},
                                   "api_call": "stripe.refunds.create"})
    assert build_grader("json").grade(same_other_order, ITEM) == 1.0
    half = json.dumps({"api_call": "stripe.refunds.create",
                       "parameters": {"charge": "ch_2", "amount": 500}})
    assert build_grader("fields").grade(half, ITEM) == pytest.approx(2 / 3)
    assert build_grader("fields").grade("not json", ITEM) == 0.0
    # extra keys cost under F1 (the default), not under recall
    extra = json.dumps({**REF, "parameters": {**REF["parameters"], "customer": "cus_1"}})
    assert build_grader("fields").grade(extra, ITEM) == pytest.approx(2 * 3 / (3 + 4))
    recall = build_grader({"type": "json_fields", "metric": "recall"})
    assert recall.grade(extra, ITEM) == 1.0
    with pytest.raises(GraderError, match="metric must be f1 or recall"):
        build_grader({"type": "json_fields", "metric": "precision"})
    schema = build_grader({"type": "json_schema", "schema": {
        "type": "object", "required": ["api_call"],
        "properties": {"api_call": {"type": "string", "pattern": "^stripe\\."}}}})
    assert schema.grade(json.dumps(REF), ITEM) == 1.0
    assert schema.grade('{"api_call": 3}', ITEM) == 0.0
    assert build_grader("json_valid").grade("{", ITEM) == 0.0
    assert build_grader({"type": "regex", "pattern": r"ch_\d"}).grade(half, ITEM) == 1.0


def test_similarity_metrics():
    for metric in ("fuzzy_match", "rouge_l", "rouge_1", "bleu"):
        g = build_grader({"type": "text_similarity", "evaluation_metric": metric,
                          "reference": "the refund was issued today"})
        assert g.grade("the refund was issued today", ITEM) == pytest.approx(1.0), metric
        assert g.grade("the refund was issued", ITEM) < 1.0, metric
        assert g.grade("xyz", ITEM) < 0.3, metric
    with pytest.raises(GraderError, match="cosine"):
        build_grader({"type": "text_similarity", "evaluation_metric": "cosine"})


def test_python_graders_from_source_and_file(tmp_path):
    src = ("def grade(sample, item):\n"
           "    out = sample['output_json'] or {}\n"
           "    return 0.5 * (out.get('api_call') == item['expected_call'])\n")
    g = build_grader({"type": "python", "source": src})
    assert g.grade(json.dumps(REF), ITEM) == 0.5
    (tmp_path / "g.py").write_text(src)
    assert load_grader(str(tmp_path / "g.py")).grade("{}", ITEM) == 0.0
    with pytest.raises(GraderError, match="grade"):
        build_grader({"type": "python", "source": "x = 1"})
    with pytest.raises(GraderError, match="server's settings"):
        build_grader({"type": "python", "source": src}, allow_code=False)


def test_endpoint_grader():
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ok = body["sample"]["output_text"].strip() == body["item"]["reference_answer"]
            data = json.dumps({"score": 1.0 if ok else 0.25}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        g = build_grader({"type": "endpoint", "url": f"http://127.0.0.1:{srv.server_port}/"})
        assert g.grade("yes", {"reference_answer": "yes"}) == 1.0
        assert g.grade("no", {"reference_answer": "yes"}) == 0.25
    finally:
        srv.shutdown()
    dead = build_grader({"type": "endpoint", "url": f"http://127.0.0.1:{srv.server_port}/"})
    with pytest.raises(GraderError, match="endpoint grader"):
        dead.grade("x", {})


def test_multi_grader_formula_and_checks():
    g = build_grader({"type": "multi", "graders": {
        "valid": "json_valid", "fields": "fields",
        "call": {"type": "string_check", "input": "{{sample.output_json.api_call}}",
                 "reference": "{{item.expected_call}}"}},
        "calculate_output": "0.2 * valid + 0.5 * fields + 0.3 * call"})
    assert g.grade(json.dumps(REF), ITEM) == pytest.approx(1.0)
    assert g.grade("{}", ITEM) == pytest.approx(0.2)
    with pytest.raises(GraderError, match="may use only"):
        build_grader({"type": "multi", "graders": {"a": "json"},
                      "calculate_output": "__import__('os')"})
    with pytest.raises(GraderError, match="expected_call"):
        g.check({"reference_answer": "{}"})  # the item lacks a field a template reads
    with pytest.raises(GraderError, match="type"):
        build_grader({"type": "nope"})
    with pytest.raises(GraderError, match="unknown grader"):
        load_grader("exactly")

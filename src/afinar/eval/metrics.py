"""Metrics for generated answers against references.

- exact_match: equal after whitespace normalisation; when both sides are JSON, equal as values
  (key order and spacing do not matter)
- valid_json: the prediction parses as JSON (reported when references are JSON)
- field_accuracy: share of the reference's JSON leaf fields (by path) that the prediction
  reproduces exactly; 0 for an unparseable prediction
- rouge_l: ROUGE-L F1 (rouge-score), with a Unicode-aware tokenizer so Spanish text counts
"""

from __future__ import annotations

import json
import re
from typing import Any

_WS = re.compile(r"\s+")


def parse_json(s: str) -> tuple[bool, Any]:
    s = s.strip()
    if s.startswith("```"):
        s = re.sub(r"^```[a-zA-Z]*\n?|```$", "", s).strip()
    try:
        return True, json.loads(s)
    except (json.JSONDecodeError, ValueError):
        return False, None


def exact_match(pred: str, ref: str) -> bool:
    ok_r, vr = parse_json(ref)
    if ok_r and isinstance(vr, (dict, list)):
        ok_p, vp = parse_json(pred)
        return ok_p and vp == vr
    return _WS.sub(" ", pred.strip()) == _WS.sub(" ", ref.strip())


def flatten(v: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for k, x in v.items():
            out.update(flatten(x, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(v, list):
        out = {}
        for i, x in enumerate(v):
            out.update(flatten(x, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: v}


def _field_counts(pred: str, ref: str) -> tuple[int, int, int] | None:
    """(leaf fields right, the reference's leaf fields, the prediction's) by path and value;
    None when the reference is not a JSON object or array, (0, 1, 1) when pred does not parse."""
    ok_r, vr = parse_json(ref)
    if not ok_r or not isinstance(vr, (dict, list)):
        return None
    ok_p, vp = parse_json(pred)
    if not ok_p:
        return 0, 1, 1
    ref_f, pred_f = flatten(vr), flatten(vp)
    return (sum(1 for k, v in ref_f.items() if k in pred_f and pred_f[k] == v), len(ref_f),
            len(pred_f))


def field_accuracy(pred: str, ref: str) -> float | None:
    c = _field_counts(pred, ref)
    return None if c is None else c[0] / c[1]


def field_f1(pred: str, ref: str) -> float | None:
    """F1 of the prediction's JSON leaf fields against the reference's (a field counts when path
    and value match): unlike field_accuracy, extra or wrong fields cost."""
    c = _field_counts(pred, ref)
    return None if c is None else 2 * c[0] / (c[1] + c[2])


class _UnicodeTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


_scorer = None


def rouge_l(pred: str, ref: str) -> float:
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer
        _scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())
    return _scorer.score(ref, pred)["rougeL"].fmeasure


def score_pairs(preds: list[str], refs: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Aggregate metrics and per-example scores."""
    per = []
    json_refs = all(parse_json(r)[0] and isinstance(parse_json(r)[1], (dict, list))
                    for r in refs) and refs
    for p, r in zip(preds, refs, strict=True):
        row = {"exact_match": float(exact_match(p, r)), "rouge_l": rouge_l(p, r)}
        if json_refs:
            row["valid_json"] = float(parse_json(p)[0])
            row["field_accuracy"] = field_accuracy(p, r) or 0.0
        per.append(row)
    keys = per[0].keys() if per else []
    agg = {k: sum(x[k] for x in per) / len(per) for k in keys}
    return agg, per

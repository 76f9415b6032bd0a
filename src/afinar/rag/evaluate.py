"""Retrieval evaluation: hit rate@k and mean reciprocal rank over a question set.

questions.jsonl: one {"question": str, "expected_source": str} per line; the expected source
matches a retrieved document by id, file name or URI.
"""

from __future__ import annotations

from pathlib import Path

from afinar import jsonutil
from afinar.errors import DataError, Issue


def read_questions(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such file", issues=[])
    out, issues = [], []
    for n, obj, problem in jsonutil.jsonl(path):
        if problem:
            issues.append(Issue(problem, n, file=str(path)))
            continue
        for f in ("question", "expected_source"):
            if not isinstance(obj, dict) or not isinstance(obj.get(f), str) or not obj[f].strip():
                issues.append(Issue(f"'{f}' must be a non-empty string", n, f, str(path)))
                break
        else:
            out.append(obj)
    if issues:
        raise DataError(f"{path}: {len(issues)} problem(s) in the question set", issues=issues)
    if not out:
        raise DataError(f"{path}: no questions", issues=[])
    return out


def source_matches(expected: str, r) -> bool:
    e = expected.strip()
    return e in (r.doc_id, r.uri) or r.doc_id.endswith("/" + e) or Path(r.doc_id).name == e \
        or r.uri.endswith("/" + e)


def rank_of(expected: list[str], results) -> tuple[int | None, list[str]]:
    """The 1-based rank (by document) of the first retrieved document that matches one of
    the expected sources, or None; and the ranked document ids."""
    docs = list(dict.fromkeys(r.doc_id for r in results))  # rank by document
    first = {}
    for r in results:
        first.setdefault(r.doc_id, r)
    rank = next((i for i, d in enumerate(docs, 1)
                 if any(source_matches(e, first[d]) for e in expected)), None)
    return rank, docs


def evaluate(kbs, kb: str, questions: list[dict], k: int = 5,
             search_type: str = "HYBRID") -> dict:
    rows, hits1, hitsk, rr = [], 0, 0, 0.0
    for q in questions:
        res = kbs.retrieve(kb, q["question"], k, search_type=search_type)
        rank, docs = rank_of([q["expected_source"]], res)
        hits1 += rank == 1
        hitsk += rank is not None
        rr += 1.0 / rank if rank else 0.0
        rows.append({"question": q["question"], "expected_source": q["expected_source"],
                     "rank": rank, "retrieved": docs})
    n = len(questions)
    return {"search_type": search_type, "k": k, "n": n, "hit_rate_at_1": hits1 / n,
            "hit_rate_at_k": hitsk / n, "mrr": rr / n, "questions": rows}

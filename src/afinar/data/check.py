"""`afinar data check`: everything wrong or notable about a data file, before compute is spent."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from afinar.data.readers import read_records
from afinar.data.schema import LABEL_FIELDS, Example, normalize
from afinar.errors import Issue

MIN_EXAMPLES = 100
RECOMMENDED = (1_000, 10_000)
NEAR_DUP_THRESHOLD = 0.9
LABEL_LIKE = LABEL_FIELDS + ("api_call", "action", "operation")


@dataclass
class CheckReport:
    file: str
    format: str
    records: int
    valid: int
    schema: str | None
    schema_counts: dict[str, int]
    errors: list[dict]
    exact_duplicates: list[list[int]] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    tokens: dict | None = None
    labels: dict | None = None
    size_guidance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.valid > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def check_file(path: str | Path, tokenizer=None, max_length: int | str = "auto",
               expected_schema: str | set[str] | None = None, context: int | None = None,
               budget: int | None = None) -> CheckReport:
    """Problems and statistics of a data file, before any compute. With a tokenizer: token
    lengths, the max_length training would use ("auto": chosen from them within `context`
    and the memory `budget` in tokens, data/length.py) and what happens to longer examples."""
    read = read_records(path)
    norm = normalize(read, expected_schema)
    exs = norm.examples
    rep = CheckReport(file=str(path), format=read.format, records=len(read.records) + sum(
        1 for i in read.issues if i.line is not None), valid=len(exs), schema=norm.schema,
        schema_counts=norm.schema_counts, errors=[i.to_dict() for i in norm.issues])
    if not read.records and not read.issues:
        rep.errors.append(Issue("the file has no records", None, file=str(path),
                                code="empty_file").to_dict())
    rep.exact_duplicates = exact_duplicates(exs)
    rep.near_duplicates = near_duplicates(exs)
    if tokenizer is not None and exs:
        rep.tokens = token_stats(tokenizer, exs, max_length, context, budget)
    rep.labels = label_balance(exs)
    rep.size_guidance = size_guidance(len(exs))
    if rep.exact_duplicates:
        n = sum(len(g) - 1 for g in rep.exact_duplicates)
        rep.warnings.append(f"{n} exact duplicate record(s): they over-weight those examples; "
                            f"remove them or deduplicate")
    if rep.tokens and rep.tokens["longer"]:
        rep.warnings.append(rep.tokens["fit"] + (
            "; raise --max-length (or leave it auto) to keep them whole"
            if rep.tokens["dropped"] else ""))
    if rep.labels and rep.labels["imbalance_ratio"] >= 5:
        rep.warnings.append(f"labels are imbalanced ({rep.labels['imbalance_ratio']:.1f}x between "
                            f"the most and least frequent)")
    return rep


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def exact_duplicates(exs: list[Example]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for e in exs:
        h = hashlib.sha1(_norm_text(e.content_key()).encode()).hexdigest()
        groups.setdefault(h, []).append(e.line)
    return [g for g in groups.values() if len(g) > 1]


def _shingles(s: str, k: int = 5) -> set[str]:
    s = _norm_text(s)
    return {s[i:i + k] for i in range(max(1, len(s) - k + 1))}


def near_duplicates(exs: list[Example], threshold: float = NEAR_DUP_THRESHOLD,
                    limit: int = 200) -> list[dict]:
    """Pairs with character-5-gram Jaccard >= threshold (MinHash LSH candidates, then exact
    Jaccard), excluding exact duplicates."""
    from datasketch import MinHash, MinHashLSH

    # a wide recall margin: candidates are confirmed by exact Jaccard below, and at 64
    # permutations a band threshold near the target misses true pairs (measured: J=0.91 missed
    # at an LSH threshold of 0.8)
    lsh = MinHashLSH(threshold=max(0.5, threshold - 0.25), num_perm=64)
    sh, seen_exact = {}, set()
    out = []
    for idx, e in enumerate(exs):
        key = _norm_text(e.content_key())
        if key in seen_exact:
            continue
        seen_exact.add(key)
        s = _shingles(key)
        m = MinHash(num_perm=64, seed=1)
        m.update_batch([x.encode() for x in s])
        for other in lsh.query(m):
            j = len(s & sh[other]) / max(1, len(s | sh[other]))
            if j >= threshold:
                out.append({"lines": [exs[other].line, e.line], "similarity": round(j, 3)})
        lsh.insert(idx, m)
        sh[idx] = s
        if len(out) >= limit:
            break
    return out


def token_stats(tokenizer, exs: list[Example], max_length: int | str = "auto",
                context: int | None = None, budget: int | None = None) -> dict:
    from afinar.data.length import choose_max_length, fit_lengths, last_answer_tokens
    from afinar.data.tokenize import encode_example, ensure_chat_template

    ensure_chat_template(tokenizer)
    lengths, per_line = [], []
    for e in exs:
        enc = encode_example(tokenizer, e, 10**9)
        n_tok, answer = len(enc), last_answer_tokens(enc)
        if e.rejected:  # a preference pair: its longer side
            n_tok = max(n_tok, len(encode_example(tokenizer, replace(e, messages=e.rejected),
                                                  10**9)))
        lengths.append(n_tok)
        per_line.append((e.line, n_tok, answer or n_tok))
    if max_length == "auto":
        choice = choose_max_length(lengths, context, budget)
        max_length, why = choice.max_length, f"auto: {choice.reason}"
    else:
        why = "given"
    fitted = fit_lengths(per_line, int(max_length))
    lengths.sort()
    n = len(lengths)

    def pct(p: float) -> int:
        return lengths[min(n - 1, int(p * n))]

    edges = [0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10**9]
    hist = Counter()
    for x in lengths:
        for a, b in zip(edges, edges[1:], strict=False):
            if a <= x < b:
                hist[f"{a}-{b - 1}" if b < 10**9 else f"{a}+"] += 1
    return {"max_length": max_length, "max_length_reason": why, "min": lengths[0],
            "mean": round(sum(lengths) / n, 1), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99), "max": lengths[-1], "total": sum(lengths),
            "covered": round(1 - fitted.longer / n, 4), "longer": fitted.longer,
            "truncated": fitted.prompt_cut, "dropped": len(fitted.dropped_lines),
            "dropped_lines": fitted.dropped_lines[:100], "fit": fitted.describe("") or "",
            "histogram": dict(hist)}


def _label_of(e: Example) -> str | None:
    if e.label is not None:
        return e.label
    raw = e.raw
    for k in LABEL_LIKE:
        if isinstance(raw.get(k), (str, int)) and not isinstance(raw.get(k), bool):
            return str(raw[k])
    out = raw.get("output")
    if isinstance(out, dict):
        for k in LABEL_LIKE:
            if isinstance(out.get(k), str):
                return out[k]
    return None


def label_balance(exs: list[Example]) -> dict | None:
    labels = [_label_of(e) for e in exs]
    labels = [x for x in labels if x is not None]
    if not labels or len(labels) < len(exs) * 0.9:
        return None
    c = Counter(labels)
    return {"counts": dict(c.most_common()), "classes": len(c),
            "imbalance_ratio": round(max(c.values()) / min(c.values()), 2)}


def size_guidance(n: int) -> dict:
    if n < MIN_EXAMPLES:
        return {"level": "too_few", "message": f"{n} examples: too few; fine-tuning needs at "
                f"least {MIN_EXAMPLES}, and {RECOMMENDED[0]:,}-{RECOMMENDED[1]:,} are recommended"}
    if n < RECOMMENDED[0]:
        return {"level": "small", "message": f"{n} examples: enough to start; "
                f"{RECOMMENDED[0]:,}-{RECOMMENDED[1]:,} are recommended for robust results"}
    if n <= RECOMMENDED[1]:
        return {"level": "recommended", "message": f"{n:,} examples: in the recommended range"}
    return {"level": "large", "message": f"{n:,} examples: more than enough; consider a sample "
            f"for quick experiments"}


def format_report(rep: CheckReport, max_errors: int = 50) -> str:
    lines = [f"Data check: {rep.file}",
             f"  format: {rep.format}   records: {rep.records}   valid: {rep.valid}   "
             f"schema: {rep.schema or 'unknown'}"]
    if len(rep.schema_counts) > 1:
        lines.append(f"  schemas seen: {rep.schema_counts}")
    lines.append(f"  size: {rep.size_guidance.get('message', '')}")
    if rep.tokens:
        t = rep.tokens
        lines.append(f"  tokens: min {t['min']}  p50 {t['p50']}  p90 {t['p90']}  p99 {t['p99']}  "
                     f"max {t['max']}")
        lines.append(f"  max_length {t['max_length']} ({t['max_length_reason']}): "
                     f"{t['covered']:.1%} of the records fit whole"
                     + (f"; {t['truncated']} would have their prompt shortened, "
                        f"{t['dropped']} left out" if t["longer"] else ""))
        lines.append("  length histogram: " + ", ".join(f"{k}: {v}"
                                                        for k, v in t["histogram"].items()))
    if rep.labels:
        lab = rep.labels
        lines.append(f"  labels ({lab['classes']} classes, imbalance {lab['imbalance_ratio']}x): "
                     + ", ".join(f"{k}={v}" for k, v in list(lab["counts"].items())[:12]))
    if rep.exact_duplicates:
        lines.append(f"  exact duplicates: {len(rep.exact_duplicates)} group(s), e.g. lines "
                     f"{rep.exact_duplicates[0]}")
    if rep.near_duplicates:
        nd = rep.near_duplicates[0]
        lines.append(f"  near duplicates: {len(rep.near_duplicates)} pair(s), e.g. lines "
                     f"{nd['lines']} (similarity {nd['similarity']})")
    if rep.errors:
        lines.append(f"  ERRORS ({len(rep.errors)}):")
        for e in rep.errors[:max_errors]:
            i = Issue(e["message"], e.get("line", e.get("record")), e["field"], e["file"],
                      e["code"], "record" if "record" in e else "line")
            lines.append(f"    - {i}")
        if len(rep.errors) > max_errors:
            lines.append(f"    ... and {len(rep.errors) - max_errors} more (use --json for all)")
    for w in rep.warnings:
        lines.append(f"  warning: {w}")
    lines.append("  result: " + ("OK" if rep.ok else "NOT USABLE - fix the errors above"))
    return "\n".join(lines)

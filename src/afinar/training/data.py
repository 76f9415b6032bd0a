"""Load, validate and tokenize training/validation data before any training compute."""

from __future__ import annotations

from dataclasses import dataclass, field

from afinar.data.length import FitReport, fit, last_answer_tokens
from afinar.data.readers import read_records
from afinar.data.schema import SUPERVISED, UNLABELLED, Example, normalize
from afinar.data.tokenize import IGNORE_INDEX, Encoded, encode_example
from afinar.errors import DataError


@dataclass
class PreparedData:
    path: str
    schema: str
    encoded: list[Encoded]
    n_records: int
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    warnings: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)  # aligned with `encoded`
    fit: FitReport | None = None  # how the examples were fitted to max_length

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.encoded)

    def summary(self) -> dict:
        return {"path": self.path, "schema": self.schema, "records": self.n_records,
                "examples": len(self.encoded), "tokens": self.n_tokens,
                "skipped_invalid": self.skipped_invalid, "truncated": self.truncated,
                "dropped_no_target": self.dropped_no_target}


def read_checked(path: str, expected: set[str], skip_invalid: bool, role: str,
                 wrong_schema_hint=lambda schema: None):
    """Read and normalise a data file, raising DataError with every issue (unless
    skip_invalid may drop them); `wrong_schema_hint(schema)` says what to do with a file of
    another kind."""
    read = read_records(path)
    norm = normalize(read, expected=expected)
    if norm.schema is None:
        raise DataError(f"{path}: no usable records in the {role} data", norm.issues,
                        hint=f"run: afinar data check {path}")
    wrong = any(i.code == "wrong_schema" for i in norm.issues)
    if norm.issues and not (skip_invalid and norm.examples and not wrong):
        raise DataError(f"{path}: {len(norm.issues)} problem(s) in the {role} data; nothing "
                        f"was trained", norm.issues,
                        hint=(wrong and wrong_schema_hint(norm.schema)) or
                        f"fix them (afinar data check {path}) or pass --skip-invalid")
    return read, norm


def finish(out: PreparedData, role: str, max_length: int, unit: str = "example"
           ) -> PreparedData:
    """The truncation and dropped-answer warnings; an error when nothing is left."""
    if out.truncated:
        out.warnings.append(f"{out.truncated} {role} {unit}(s) longer than max_length="
                            f"{max_length} were truncated")
    if out.dropped_no_target:
        out.warnings.append(f"{out.dropped_no_target} {role} {unit}(s) had no answer tokens "
                            f"left after truncation and were dropped; raise max_length")
    if not out.encoded:
        raise DataError(f"{out.path}: no {role} {unit}s left after tokenization",
                        hint="raise --max-length; the prompts fill the whole window")
    return out


def prepare(path: str, tokenizer, max_length: int | None, skip_invalid: bool = False,
            role: str = "training") -> PreparedData:
    """Read, check and tokenize supervised data whole; with `max_length`, fit it
    (`fit_length`: the prompt is cut before the answer, data/length.py). None leaves the
    examples whole, for a length chosen from them."""
    read, norm = read_checked(
        path, SUPERVISED | UNLABELLED, skip_invalid, role,
        lambda schema: "preference pairs train with type dpo: afinar train --type dpo, or "
                       "hyperParameters {\"type\": \"dpo\"} in a job"
        if schema == "preference" else None)
    out = PreparedData(path, norm.schema, [], len(read.records),
                       skipped_invalid=len(norm.issues))
    for ex in norm.examples:
        enc = encode_example(tokenizer, ex, 10**9)
        if all(t == IGNORE_INDEX for t in enc.labels[1:]):
            out.dropped_no_target += 1
            continue
        out.encoded.append(enc)
        out.examples.append(ex)
    if max_length is None:
        return out
    return fit_length(out, max_length, role)


def fit_length(out: PreparedData, max_length: int, role: str = "training") -> PreparedData:
    """Every example within `max_length` (data/length.py: the prompt cut, the earliest turns
    dropped, or, when its last answer alone is longer, the example left out and named)."""
    kept_enc, kept_ex = [], []
    rep = FitReport(max_length, examples=len(out.encoded))
    for enc, ex in zip(out.encoded, out.examples or [None] * len(out.encoded), strict=True):
        got, how = fit(enc, max_length)
        rep.count(how, enc.line, last_answer_tokens(enc) if how == "dropped" else 0)
        if got is not None:
            kept_enc.append(got)
            kept_ex.append(ex)
    out.encoded = kept_enc
    out.examples = kept_ex if out.examples else []
    out.fit = rep
    out.truncated = rep.prompt_cut + rep.turns_cut
    out.dropped_no_target += len(rep.dropped_lines)
    if rep.describe(role):
        out.warnings.append(rep.describe(role))
    if not out.encoded:
        raise DataError(f"{out.path}: no {role} examples left: every answer is longer than "
                        f"max_length={max_length} tokens",
                        hint=f"raise --max-length above {rep.longest_answer} (or leave it "
                             f"auto)")
    return out

"""Read JSONL, JSON, CSV, Parquet and plain-text files into raw records with their line numbers.

Reading never raises on bad content: it returns what it could read plus every problem found
(malformed JSON, invalid UTF-8, over-long lines), each with its line number, so a data check can
report all of them at once.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afinar import jsonutil
from afinar.errors import DataError, Issue

MAX_LINE_BYTES = 1_000_000  # one JSONL record larger than this is almost always a mistake
# a .json array or a Parquet file is read whole (several times its size in memory): beyond
# this, JSONL, which is read line by line
MAX_WHOLE_FILE_BYTES = 256 * 2**20

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
           ".parquet": "parquet", ".txt": "text", ".md": "text"}


@dataclass
class RawRecord:
    line: int  # 1-based line number (JSONL, CSV) or record number (JSON array, Parquet)
    data: Any


@dataclass
class ReadResult:
    path: str
    format: str
    records: list[RawRecord]
    issues: list[Issue]
    unit: str = "line"


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'",
                        hint=f"use one of {sorted(FORMATS)}")
    return fmt


def read_records(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> ReadResult:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found", hint="check the path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file",
                        hint=f"pass one file of type {sorted(FORMATS)}")
    fmt = detect_format(path)
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
              "parquet": _read_parquet, "text": _read_text}[fmt]
    return reader(path, max_line_bytes)


def _read_jsonl(path: Path, max_line_bytes: int) -> ReadResult:
    records, issues = [], []
    f = str(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > max_line_bytes:
                issues.append(Issue(f"line is {len(raw):,} bytes, over the {max_line_bytes:,} limit",
                                    lineno, file=f, code="line_too_long"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                issues.append(Issue(f"invalid UTF-8 at byte {e.start}: re-save the file as UTF-8",
                                    lineno, file=f, code="invalid_utf8"))
                continue
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = jsonutil.loads(text)
            except jsonutil.JSONProblem as e:
                msg = e.message.replace(f" at line 1 column {e.column}", f" at column "
                                        f"{e.column}") if e.column else e.message
                issues.append(Issue(msg, lineno, file=f, code="malformed_json"))
                continue
            if not isinstance(obj, dict):
                issues.append(Issue(f"expected a JSON object, got {type(obj).__name__}", lineno,
                                    file=f, code="not_an_object"))
                continue
            records.append(RawRecord(lineno, obj))
    return ReadResult(f, "jsonl", records, issues)


def _decode_whole(path: Path) -> tuple[str | None, list[Issue]]:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return None, [Issue(f"invalid UTF-8 at byte {e.start}: re-save the file as UTF-8", line,
                            file=str(path), code="invalid_utf8")]


def _too_big(path: Path, fmt: str, unit: str) -> ReadResult | None:
    size = path.stat().st_size
    if size <= MAX_WHOLE_FILE_BYTES:
        return None
    return ReadResult(str(path), fmt, [], [Issue(
        f"the file is {size / 2**20:,.0f} MB; a {fmt} file is read whole, so the limit is "
        f"{MAX_WHOLE_FILE_BYTES // 2**20} MB: convert it to JSONL (one record per line), "
        f"which is read line by line", None, file=str(path), code="file_too_large",
        unit=unit)], unit=unit)


def _checked(f: str, items: list, max_bytes: int, unit: str,
             issues: list[Issue]) -> list[RawRecord]:
    """Records of a file read whole, each checked as a JSONL line is: an object, not over the
    size limit, its strings valid Unicode with no NUL."""
    records = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            issues.append(Issue(f"expected a JSON object, got {type(item).__name__}", i, file=f,
                                code="not_an_object", unit=unit))
            continue
        size = len(json.dumps(item, ensure_ascii=False, default=str).encode("utf-8",
                                                                           "surrogatepass"))
        if size > max_bytes:
            issues.append(Issue(f"record is {size:,} bytes, over the {max_bytes:,} limit", i,
                                file=f, code="line_too_long", unit=unit))
            continue
        try:
            jsonutil.check(item)
        except jsonutil.JSONProblem as e:
            issues.append(Issue(e.message, i, file=f, code="malformed_json", unit=unit))
            continue
        records.append(RawRecord(i, item))
    return records


def _read_json(path: Path, max_line_bytes: int) -> ReadResult:
    f = str(path)
    if (big := _too_big(path, "json", "record")) is not None:
        return big
    text, issues = _decode_whole(path)
    if text is None:
        return ReadResult(f, "json", [], issues, unit="record")
    try:
        obj = jsonutil.loads(text, max_depth=jsonutil.MAX_DEPTH + 2)  # the array's own levels
    except jsonutil.JSONProblem as e:
        hint = " (one object per line? name the file .jsonl)" if "Extra data" in e.message \
            else ""
        return ReadResult(f, "json", [], [Issue(f"{e.message}{hint}", e.line, file=f,
                                                code="malformed_json")])
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if len(obj) == 1 and lists else [obj]
    if not isinstance(obj, list):
        return ReadResult(f, "json", [], [Issue("expected a JSON array of objects", None, file=f,
                                                code="not_an_array")])
    issues = []
    records = _checked(f, obj, max_line_bytes, "record", issues)
    return ReadResult(f, "json", records, issues, unit="record")


def _read_csv(path: Path, max_line_bytes: int) -> ReadResult:
    f = str(path)
    text, issues = _decode_whole(path)
    if text is None:
        return ReadResult(f, "csv", [], issues)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        for row in reader:
            # line_num is the last physical line of the row; header is line 1
            extra = row.pop(None, None)
            if extra:
                issues.append(Issue(f"row has {len(extra)} more value(s) than the header",
                                    reader.line_num, file=f, code="csv_columns"))
                continue
            if any("\0" in (v or "") for v in row.values()):
                issues.append(Issue("the row contains a NUL byte (binary data in a text file?)",
                                    reader.line_num, file=f, code="nul_byte"))
                continue
            records.append(RawRecord(reader.line_num, {k: v for k, v in row.items()}))
    except csv.Error as e:
        issues.append(Issue(f"malformed CSV: {e}", reader.line_num, file=f, code="malformed_csv"))
    return ReadResult(f, "csv", records, issues)


def _read_parquet(path: Path, max_line_bytes: int) -> ReadResult:
    import pyarrow.parquet as pq

    f = str(path)
    if (big := _too_big(path, "parquet", "record")) is not None:
        return big
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        return ReadResult(f, "parquet", [], [Issue(f"cannot read Parquet: {e}", None, file=f,
                                                   code="malformed_parquet")], unit="record")
    issues: list[Issue] = []
    records = _checked(f, table.to_pylist(), max_line_bytes, "record", issues)
    return ReadResult(f, "parquet", records, issues, unit="record")


def _read_text(path: Path, max_line_bytes: int) -> ReadResult:
    f = str(path)
    text, issues = _decode_whole(path)
    if text is None:
        return ReadResult(f, "text", [], issues)
    return ReadResult(f, "text", [RawRecord(1, {"text": text})] if text.strip() else [], [])


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

"""`afinar data clean`: what goes, what stays, and why."""

from __future__ import annotations

import json

import pytest

from afinar.cli.main import main
from afinar.data.clean import clean_file
from afinar.errors import DataError

from conftest import write_jsonl

BASE = "The quarterly report shows revenue growth of twelve percent across all regions"


def _rows():
    return [
        {"text": BASE, "label": "finance"},                                    # 1
        {"text": BASE.upper() + "  ", "label": "finance"},                     # 2 exact dup
        {"text": BASE.replace("The quarterly", "Our quarterly") + ".",
         "label": "finance"},                                                  # 3 near dup
        {"text": "The court ruled the contract void for lack of consideration",
         "label": "legal"},                                                    # 4
        {"text": "The quarterly meeting shows nothing of the sort about regions",
         "label": "finance"},                                                  # 5 similar words, not a near dup
        {"text": "ok", "label": "legal"},                                      # 6 too short
        {"text": "Tenant may terminate the lease with thirty days written notice",
         "label": "legal"},                                                    # 7
        {"text": "Bond yields rose as investors priced in further rate increases",
         "label": "finance"},                                                  # 8
    ]


def test_clean_removes_duplicates_short_and_reports(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _rows())
    s = clean_file(src, tmp_path / "out.jsonl", min_chars=10)
    assert s.removed["exact_duplicate"] == [2]
    assert [x["line"] for x in s.removed["near_duplicate"]] == [3]
    assert s.removed["near_duplicate"][0]["of"] == 1
    assert s.removed["shorter_than_10_chars"] == [6]
    kept = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in kept] == [_rows()[i - 1]["text"] for i in (1, 4, 5, 7, 8)]
    assert s.labels_after == {"finance": 3, "legal": 2}
    assert json.loads((tmp_path / "out.summary.json").read_text())["records_out"] == 5


def test_balance_down_and_up(tmp_path):
    rows = [{"text": f"finance item number {i} about markets {i * 7}", "label": "finance"}
            for i in range(6)] + [{"text": f"legal clause {i} on liability {i * 13}",
                                   "label": "legal"} for i in range(2)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    down = clean_file(src, tmp_path / "down.jsonl", near_dup_threshold=None, balance="down")
    assert down.labels_after == {"finance": 2, "legal": 2} and len(down.removed["downsampled"]) == 4
    up = clean_file(src, tmp_path / "up.jsonl", near_dup_threshold=None, balance="up")
    assert up.labels_after == {"finance": 6, "legal": 6} and up.added == {"legal": 4}


def test_clean_errors_and_cli(tmp_path, capsys):
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"t {i} x" * 3, "label": "a"}
                                               for i in range(4)])
    with pytest.raises(DataError, match="single label"):
        clean_file(one, tmp_path / "o.jsonl", balance="down")
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"text": "a b c d", "label": "x"},
                                                       {"text": "e f g h"}])
    with pytest.raises(DataError, match="line 2"):
        clean_file(partial, tmp_path / "o.jsonl", balance="up")
    src = write_jsonl(tmp_path / "in.jsonl", _rows())
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "c.jsonl"),
                 "--min-chars", "10"]) == 0
    out = capsys.readouterr().out
    assert "removed     1  exact duplicate: lines 2" in out and "8 records" in out

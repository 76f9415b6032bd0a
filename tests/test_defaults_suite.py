"""The defaults task suite (benchmarks/defaults_tasks.py, defaults_suite.py): every task's data
passes afinar's data check, held-out rows use values the training rows never show, and the
runner trains and evaluates through the CLI end to end (on a tiny model here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from defaults_tasks import TASKS, make  # noqa: E402


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_data_is_valid_and_held_out(task, tmp_path):
    from afinar.data.check import check_file
    from afinar.data.readers import write_jsonl

    train, test = make(task, 120, 30)
    assert len(train) == 120 and len(test) == 30
    for rows, name in ((train, "train"), (test, "test")):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
        rep = check_file(tmp_path / f"{name}.jsonl")
        assert rep.ok, rep.errors[:3]

    def key(r):  # the prompt and answer of a row
        return json.dumps(r["messages"], sort_keys=True)
    assert not {key(r) for r in test} & {key(r) for r in train}  # nothing to recall
    assert make(task, 120, 30) == (train, test)  # seeded


def test_runner_trains_and_evaluates_through_the_cli(tmp_path, tiny_model_dir, capsys):
    from defaults_suite import main

    assert main(["--tasks", "date_format", "--base-model", str(tiny_model_dir), "--train",
                 "24", "--test", "4", "--set", "epochs=1", "--set", "precision=fp32",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    # 24 examples and a variant of each with re-sampled years and days (value_variants
    # auto): 6 steps of 8
    assert [r["task"] for r in res] == ["date_format"] and res[0]["steps"] == 6
    assert 0 <= res[0]["base"] <= 1 and 0 <= res[0]["tuned"] <= 1
    assert "| date_format |" in capsys.readouterr().out

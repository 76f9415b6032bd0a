"""The same training under torchrun: two CPU processes on the gloo backend (DDP via
accelerate). Marked `distributed`; runs in CI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import mapping_rows, write_jsonl


@pytest.mark.distributed
def test_two_process_ddp_training(tmp_path, tiny_model_dir, _isolated_home):
    data = write_jsonl(tmp_path / "train.jsonl", mapping_rows(64))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "afinar.cli.main", "-q", "train",
           "--train-data", str(data), "--base-model", str(tiny_model_dir), "--output-dir",
           str(out), "--name", "ddp-run", "--epochs", "3", "--batch-size", "8",
           "--learning-rate", "0.01", "--method", "full", "--threads", "1", "--json"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(x) for x in _json_objects(r.stdout)]
    assert len(results) == 2  # one summary per rank
    main = results[0]
    # 64 examples / batch 8 = 8 batches per epoch, split over 2 ranks -> 4 steps per epoch
    assert main["status"] == "completed" and main["steps"] == 12
    rows = list(csv.DictReader(open(out / "training_artifacts/step_wise_training_metrics.csv")))
    assert len(rows) == 12  # written once, by the main process
    assert float(rows[-1]["training_loss"]) < float(rows[0]["training_loss"]) * 0.8
    assert (out / "merged" / "model.safetensors").exists()


def _json_objects(text: str) -> list[str]:
    objs, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                objs.append(text[start:i + 1])
    return [o for o in objs if '"status"' in o]

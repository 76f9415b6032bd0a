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


def _torchrun(tmp_path, tiny_model_dir, name: str, *extra: str) -> list[dict]:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, mapping_rows(64))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "afinar.cli.main", "-q", "train",
           "--train-data", str(data), "--base-model", str(tiny_model_dir), "--output-dir",
           str(tmp_path / name), "--name", name, "--epochs", "3", "--batch-size", "8",
           "--learning-rate", "0.01", "--method", "full", "--threads", "1", "--json",
           # fp32: DDP and FSDP are compared to 1e-4, closer than bf16 autocast rounds
           "--precision", "fp32", *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in _json_objects(r.stdout)]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run) -> list[float]:
    rows = csv.DictReader(open(run / "training_artifacts/step_wise_training_metrics.csv"))
    return [float(r["training_loss"]) for r in rows]


@pytest.mark.distributed
def test_two_process_ddp_and_fsdp_training(tmp_path, tiny_model_dir, _isolated_home):
    """DDP, then FSDP (sharded weights, gradients and optimizer state) on the same data: the
    same losses and weights; an FSDP run stopped after its first step (STOP file) and resumed
    ends where the uninterrupted one does."""
    from safetensors.torch import load_file

    results = _torchrun(tmp_path, tiny_model_dir, "ddp-run")
    out = tmp_path / "ddp-run"
    assert len(results) == 2  # one summary per rank
    main = results[0]
    # 64 examples / batch 8 = 8 batches per epoch, split over 2 ranks -> 4 steps per epoch
    assert main["status"] == "completed" and main["steps"] == 12
    rows = list(csv.DictReader(open(out / "training_artifacts/step_wise_training_metrics.csv")))
    assert len(rows) == 12  # written once, by the main process
    assert float(rows[-1]["training_loss"]) < float(rows[0]["training_loss"]) * 0.8
    assert (out / "merged" / "model.safetensors").exists()

    fsdp = _torchrun(tmp_path, tiny_model_dir, "fsdp-run", "--fsdp")
    assert fsdp[0]["status"] == "completed" and fsdp[0]["steps"] == 12
    assert _losses(tmp_path / "fsdp-run") == pytest.approx(_losses(out), rel=1e-4)
    a = load_file(str(out / "merged" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp-run" / "merged" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-3, k

    stop = tmp_path / "fsdp-resumed" / "STOP"
    stop.parent.mkdir()
    stop.touch()  # a graceful stop, seen by both processes after their first step
    first = _torchrun(tmp_path, tiny_model_dir, "fsdp-resumed", "--fsdp")
    assert first[0]["status"] == "stopped" and first[0]["steps"] == 1 and not stop.exists()
    resumed = _torchrun(tmp_path, tiny_model_dir, "fsdp-resumed", "--fsdp", "--resume")
    assert resumed[0]["status"] == "completed" and resumed[0]["steps"] == 12
    assert _losses(tmp_path / "fsdp-resumed") == pytest.approx(_losses(tmp_path / "fsdp-run"),
                                                               rel=1e-5)


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

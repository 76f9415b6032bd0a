"""Script mode: a user's training script written for SageMaker's HuggingFace estimator runs
unchanged: it receives every SM_* variable and its hyperparameters, trains a tiny model, and
what it saves becomes a custom model that deploy()/predict() serve; a failing script ends the
job Failed with the tail of its log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRAIN_PY = r'''
import argparse, json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int)
p.add_argument("--train_batch_size", type=int)
p.add_argument("--model_name")
p.add_argument("--learning_rate", type=float)
args = p.parse_args()

need = ["SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_CHANNELS", "SM_CHANNEL_TRAIN", "SM_NUM_GPUS",
        "SM_CURRENT_HOST", "SM_HOSTS", "SM_HPS", "SM_HP_EPOCHS", "SM_TRAINING_ENV"]
missing = [k for k in need if k not in os.environ]
assert not missing, f"missing {missing}"
hps = json.loads(os.environ["SM_HPS"])
assert hps == {"epochs": 3, "train_batch_size": 4, "model_name": args.model_name,
               "learning_rate": 0.05}, hps
assert args.epochs == 3 and args.train_batch_size == 4 and os.environ["SM_HP_EPOCHS"] == "3"
assert json.loads(os.environ["SM_CHANNELS"]) == ["train"]
assert json.loads(os.environ["SM_HOSTS"]) == [os.environ["SM_CURRENT_HOST"]] == ["algo-1"]
assert int(os.environ["SM_NUM_GPUS"]) == torch.cuda.device_count()
train_dir = os.environ["SM_CHANNEL_TRAIN"]
texts = [json.loads(l)["text"] for f in sorted(os.listdir(train_dir))
         for l in open(os.path.join(train_dir, f))]
assert len(texts) == 8

tok = AutoTokenizer.from_pretrained(args.model_name)
model = AutoModelForCausalLM.from_pretrained(args.model_name)
opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
batch = tok(texts[: args.train_batch_size], return_tensors="pt", padding=True)
losses = []
for _ in range(args.epochs * 4):
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward(); opt.step(); opt.zero_grad()
    losses.append(out.loss.item())
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
assert losses[-1] < losses[0]
model.save_pretrained(os.environ["SM_MODEL_DIR"])
tok.save_pretrained(os.environ["SM_MODEL_DIR"])
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.json"), "w") as f:
    json.dump({"first_loss": losses[0], "last_loss": losses[-1]}, f)
'''


@pytest.fixture
def scripts(tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "train.py").write_text(TRAIN_PY)
    (d / "helper.txt").write_text("shipped with the code")
    (d / "fail.py").write_text("import sys\nprint('loading data')\n"
                               "raise SystemExit('bad input: column label missing')\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": f"the sky is blue {i}"})
                                                for i in range(8)) + "\n")
    return d, data


def test_sdk_fit_deploy_predict(scripts, settings, tiny_model_dir):
    from afinar.models.registry import custom_model_record
    from afinar.sdk import HuggingFace

    src, data = scripts
    est = HuggingFace(entry_point="train.py", source_dir=str(src), role="arn:aws:iam::1:role/x",
                      instance_type="ml.g5.xlarge", transformers_version="4.36",
                      hyperparameters={"epochs": 3, "train_batch_size": 4,
                                       "model_name": str(tiny_model_dir),
                                       "learning_rate": 0.05},
                      base_job_name="sky", settings=settings)
    res = est.fit({"train": str(data / "train.jsonl")}, logs=False)
    assert res.status == "Completed" and res.exit_code == 0 and res.registered
    assert (res.job_dir / "code" / "helper.txt").is_file()  # the source dir was shipped
    assert "loss" in res.log.read_text()
    metrics = json.loads((res.job_dir / "output" / "data" / "metrics.json").read_text())
    assert metrics["last_loss"] < metrics["first_loss"]
    rec = custom_model_record(settings, res.name)
    assert rec["method"] == "script" and rec["model_dir"] == str(res.model_dir)
    assert json.loads((res.job_dir / "job.json").read_text())["status"] == "Completed"

    pred = est.deploy()
    out = pred.predict({"inputs": ["the sky is", "hello"], "parameters": {"max_new_tokens": 4}})
    assert len(out) == 2 and all(isinstance(o["generated_text"], str) for o in out)
    pred.delete_endpoint()


def test_failing_script_ends_failed_with_its_log(scripts, settings):
    from afinar.sdk import HuggingFace
    from afinar.training.script import ScriptFailed, run_script

    src, _ = scripts
    res = run_script("fail.py", settings, source_dir=str(src), name="failing")
    assert res.status == "Failed" and res.exit_code == 1 and not res.registered
    assert "bad input: column label missing" in res.failure_message
    assert "loading data" in res.failure_message
    job = json.loads((res.job_dir / "job.json").read_text())
    assert job["status"] == "Failed" and job["exit_code"] == 1
    with pytest.raises(ScriptFailed, match="column label missing"):
        HuggingFace(entry_point="fail.py", source_dir=str(src), settings=settings).fit(
            logs=False)


def test_cli_script_mode(scripts, tmp_path, tiny_model_dir):
    import os
    src, data = scripts
    env = dict(os.environ, AFINAR_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "afinar.cli.main", "train", "--script", "train.py",
           "--source-dir", str(src), "--name", "cli-sky", "--train-data",
           str(data / "train.jsonl"), "--json", "--hyperparameters", "epochs=3",
           "train_batch_size=4", f"model_name={tiny_model_dir}", "learning_rate=0.05"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["status"] == "Completed" and res["registered"]
    r = subprocess.run([sys.executable, "-m", "afinar.cli.main", "models", "list", "--json"],
                       env=env, capture_output=True, text=True)
    assert "cli-sky" in r.stdout
    r = subprocess.run([sys.executable, "-m", "afinar.cli.main", "train", "--script", "fail.py",
                        "--source-dir", str(src), "--name", "cli-fail"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "column label missing" in r.stderr


def test_script_runs_are_jobs_of_the_store(scripts, settings):
    """A script run is a job of kind "script": its events, its end and its failure message
    are in the one store; a stop asked through the store ends the script (Stopped)."""
    import threading
    import time

    from afinar import db
    from afinar.jobs.scripts import run_foreground
    from afinar.jobs.service import JobService
    from afinar.jobs.store import set_fields

    src, _ = scripts
    (src / "slow.py").write_text("import time\nprint('started', flush=True)\n"
                                 "time.sleep(600)\n")
    res = run_foreground(settings, "fail.py", source_dir=str(src), name="failing-job")
    svc = JobService(settings)
    with svc.engine.connect() as c:
        row = c.execute(db.jobs.select().where(db.jobs.c.name == "failing-job")).first()
    assert row.kind == "script" and row.status == "Failed" and res.status == "Failed"
    assert "column label missing" in row.failure_message
    assert any("fail.py" in e["message"] for e in svc.job_events("failing-job")["events"])

    def stop_when_started():
        deadline = time.time() + 120
        while time.time() < deadline:
            with svc.engine.connect() as c:
                r = c.execute(db.jobs.select().where(db.jobs.c.name == "slow-job")).first()
            log = settings.runs_dir / "slow-job" / "logs" / "script.log"
            if r is not None and log.exists() and "started" in log.read_text():
                set_fields(svc.engine, r.id, status="Stopping")
                return
            time.sleep(0.2)

    t = threading.Thread(target=stop_when_started)
    t.start()
    res = run_foreground(settings, "slow.py", source_dir=str(src), name="slow-job")
    t.join()
    assert res.status == "Stopped" and res.seconds < 300
    with svc.engine.connect() as c:
        assert c.execute(db.jobs.select().where(db.jobs.c.name == "slow-job")).first(
            ).status == "Stopped"


def test_a_server_start_watches_a_running_foreground_job(settings):
    """A script job the CLI is running is watched by a server that starts meanwhile, not run a
    second time; one whose process is gone is queued again (resumed as other kinds are)."""
    import os

    from afinar.jobs.scheduler import Scheduler
    from afinar.jobs.scripts import submit
    from afinar.jobs.service import JobService
    from afinar.jobs.store import set_fields

    svc = JobService(settings)
    spec = {"name": "fg", "job_dir": str(settings.home / "runs" / "fg"), "argv": [],
            "env": {}, "meta": {"entry_point": "train.py", "source_dir": "/src"}}
    live = submit(svc, spec)
    set_fields(svc.engine, live, worker_pid=os.getpid())
    gone = submit(svc, dict(spec, name="fg-gone"))
    set_fields(svc.engine, gone, worker_pid=2 ** 22 + 12345)  # no such process
    sched = Scheduler(settings, svc.engine)
    sched.recover()
    assert live in sched.running and live not in sched.queue
    assert gone in sched.queue and gone not in sched.running

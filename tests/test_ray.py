"""The Ray executor against a real single-node Ray head on 127.0.0.1: the seed-style
customization job and a batch-inference job run as Ray jobs, report through the same store,
and a server restarted while a Ray job runs adopts it instead of starting it again."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import CLAUDE, ROLE, Server
from test_batch_inference import _records
from test_batch_inference import _wait as wait_batch
from test_service import _create
from test_service import _wait as wait_job

from conftest import mapping_rows

pytest.importorskip("ray.job_submission")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group (so the whole cluster stops with
    it), small: 2 CPUs, an 80 MB object store."""
    ray = Path(sys.executable).parent / "ray"
    tmp = Path(f"/tmp/ray-{secrets.token_hex(3)}")  # Ray's socket paths must stay short
    dash = _port()
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--num-cpus", "2", "--object-store-memory", "80000000", "--include-dashboard", "true",
         "--temp-dir", str(tmp), "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    from ray.job_submission import JobSubmissionClient
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            assert proc.poll() is None, "ray start exited"
            assert time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
    yield address
    # a throwaway head: its graceful stop takes ~30 s, and nothing of it is kept
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    shutil.rmtree(tmp, ignore_errors=True)


def _server(home: Path, tiny: Path, address: str) -> Server:
    return Server(home, tiny, extra_toml=f'executor = "ray"\nray_address = "{address}"\n'
                                         f'ray_python = "{sys.executable}"\n')


def test_jobs_run_on_ray(tmp_path, tiny_model_dir, ray_head):
    from ray.job_submission import JobSubmissionClient

    s = _server(tmp_path / "home", tiny_model_dir, ray_head).start()
    try:
        bedrock = s.client()
        train = s.put("ft/train.jsonl", mapping_rows(32))
        arn = _create(bedrock, "ray-ft", "ray-model", train,
                      hp={"epochCount": "1", "batchSize": "8", "learningRate": "0.01"})
        batch = bedrock.create_model_invocation_job(
            jobName="ray-batch", roleArn=ROLE, modelId=CLAUDE,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": s.put("b/in.jsonl", _records(4))}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/b/out/"}},
        )["jobArn"]
        j = wait_job(bedrock, arn, timeout=600)
        assert j["status"] == "Completed", j.get("failureMessage")
        assert bedrock.get_custom_model(modelIdentifier="ray-model")["modelStatus"] == "Active"
        b = wait_batch(bedrock, batch, timeout=600)
        assert b["status"] == "Completed" and b["successRecordCount"] == 4, b
        job_id = arn.rsplit("/", 1)[-1]
        started = [e["message"] for e in s.events(job_id) if "worker started" in e["message"]]
        assert started and "on Ray as afinar-" in started[0]
        # Ray ran them, and their logs came back into the job directories
        subs = {x.submission_id for x in JobSubmissionClient(ray_head).list_jobs()}
        assert f"afinar-{job_id}-1" in subs
        assert (s.home / "jobs" / job_id / "worker.log").read_text().strip()
    finally:
        s.kill()


def test_restarted_server_adopts_a_running_ray_job(tmp_path, tiny_model_dir, ray_head):
    """The server dies while its job trains on Ray: the job keeps running there, and the
    restarted server watches it to the end (one Ray job, one attempt)."""
    from ray.job_submission import JobSubmissionClient

    s = _server(tmp_path / "home", tiny_model_dir, ray_head).start()
    arn, job_id = _training(s, "ray-long")
    s.kill()  # SIGKILL: no shutdown at all
    s.start()
    try:
        j = wait_job(s.client(), arn, timeout=600)
        assert j["status"] == "Completed", j.get("failureMessage")
        subs = [x.submission_id for x in JobSubmissionClient(ray_head).list_jobs()
                if x.submission_id.startswith(f"afinar-{job_id}")]
        assert subs == [f"afinar-{job_id}-1"]
        assert any("still runs" in e["message"] for e in s.events(job_id))
    finally:
        s.kill()


def test_a_killed_ray_worker_fails_its_job_with_the_reason(tmp_path, tiny_model_dir, ray_head):
    s = _server(tmp_path / "home", tiny_model_dir, ray_head).start()
    try:
        bedrock = s.client()
        arn, job_id = _training(s, "ray-killed")
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _cmdline(p).endswith(f"afinar.jobs.worker {job_id}")]
        assert pids, "the worker process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        j = wait_job(bedrock, arn, timeout=300)
        assert j["status"] == "Failed" and "worker" in j["failureMessage"], j
    finally:
        s.kill()


def _training(s: Server, name: str) -> tuple[str, str]:
    """A customization job long enough (575 steps) to be caught training; (ARN, job id)."""
    bedrock = s.client()
    arn = _create(bedrock, name, f"{name}-model", s.put("ft/train.jsonl", mapping_rows(128)),
                  hp={"epochCount": "5", "batchSize": "1", "learningRate": "0.01"})
    wait_job(bedrock, arn, cond=lambda j: j["statusDetails"]["trainingDetails"]["status"]
             == "InProgress", timeout=600)
    return arn, arn.rsplit("/", 1)[-1]


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""

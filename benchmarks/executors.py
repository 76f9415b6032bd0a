"""50 queued tiny customization jobs at max_concurrent_jobs = 2, on the local executor and on a
single-node Ray head started here: how many finished, and in what time; and the idle memory of
the server alone and of Ray's head.

    .venv/bin/python benchmarks/executors.py [--jobs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROLE = "arn:aws:iam::123456789012:role/x"


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += p.memory_info().rss + sum(c.memory_info().rss for c in p.children(True))
        except psutil.Error:
            pass
    return total / 2**20


def start_ray() -> tuple[subprocess.Popen, str]:
    ray = Path(sys.executable).parent / "ray"
    dash = port()
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
         str(port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--num-cpus", "2", "--object-store-memory", "80000000", "--include-dashboard", "true",
         "--temp-dir", f"/tmp/ray-{secrets.token_hex(3)}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from ray.job_submission import JobSubmissionClient
    address = f"http://127.0.0.1:{dash}"
    for _ in range(180):
        try:
            JobSubmissionClient(address).list_jobs()
            return proc, address
        except Exception:
            time.sleep(1)
    raise TimeoutError("Ray did not start")


def run(executor: str, tiny: Path, n: int, ray_address: str | None) -> dict:
    import boto3
    from botocore.config import Config

    home = Path(tempfile.mkdtemp(prefix=f"afinar-exec-{executor}-"))
    p = port()
    extra = (f'executor = "ray"\nray_address = "{ray_address}"\nray_python = '
             f'"{sys.executable}"\n' if executor == "ray" else "")
    (home / "afinar.toml").write_text(f"max_concurrent_jobs = 2\n{extra}[model_aliases]\n"
                                      f'"tiny" = "{tiny}"\n')
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(8)]
    data = home / "s3" / "b" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.Popen([sys.executable, "-m", "afinar.cli.main", "serve", "--port", str(p),
                             "--log-level", "warning"], env=dict(os.environ, AFINAR_HOME=str(home)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{p}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/afinar/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(2)
    idle = rss_mb([proc.pid])
    bedrock = boto3.client("bedrock", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="y",
                           config=Config(retries={"max_attempts": 0}))
    t0 = time.time()
    arns = [bedrock.create_model_customization_job(
        jobName=f"j{i}", customModelName=f"m{i}", roleArn=ROLE, baseModelIdentifier="tiny",
        trainingDataConfig={"s3Uri": "s3://b/train.jsonl"},
        outputDataConfig={"s3Uri": "s3://b/out/"},
        hyperParameters={"epochCount": "1", "batchSize": "8"})["jobArn"] for i in range(n)]
    status = {}
    while time.time() - t0 < 3600:
        status = {a: bedrock.get_model_customization_job(jobIdentifier=a)["status"]
                  for a in arns}
        if all(s in ("Completed", "Failed", "Stopped") for s in status.values()):
            break
        time.sleep(2)
    took = time.time() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    done = sum(s == "Completed" for s in status.values())
    return {"executor": executor, "jobs": n, "completed": done,
            "failed": sum(s == "Failed" for s in status.values()), "seconds": round(took, 1),
            "server_idle_mb": round(idle)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    a = ap.parse_args()
    from afinar.config import load_settings
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin
    from afinar.models.tiny import make_tiny_model

    tok = ensure_builtin(BUILTIN_MODELS["smollm2-135m-instruct"], load_settings())
    tiny = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", tok)
    print(json.dumps(run("local", tiny, a.jobs, None)))
    ray, address = start_ray()
    try:
        time.sleep(3)
        print(json.dumps({"ray_head_idle_mb": round(rss_mb([ray.pid]))}))
        print(json.dumps(run("ray", tiny, a.jobs, address)))
    finally:
        os.killpg(ray.pid, signal.SIGTERM)
        ray.wait(60)


if __name__ == "__main__":
    main()

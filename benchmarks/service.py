"""The customization server under load, with boto3 against a real `afinar serve` subprocess.

1. Latency: 1,000 jobs in the store; p50/p95 of GetModelCustomizationJob and
   ListModelCustomizationJobs (a page of 100, and a status filter), beside the trivial health
   route measured in the same run as the baseline. Target: p95 under 50 ms.
2. Memory: the idle server's RSS before any model is loaded. Target: under 300 MB.
3. Queue: N tiny-model jobs submitted at once with max_concurrent_jobs=C; how many finish, the
   most seen running at once, and the wall time.

    .venv/bin/python benchmarks/service.py [--jobs 1000] [--queue 8] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROLE = "arn:aws:iam::123456789012:role/BedrockRole"


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(home: Path, p: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "afinar.cli.main", "serve", "--port", str(p),
                             "--log-level", "warning"], env=dict(os.environ, AFINAR_HOME=str(home)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p}/afinar/health", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def tiny_model(home: Path) -> Path:
    from afinar.config import load_settings
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin
    from afinar.models.tiny import make_tiny_model

    tok = ensure_builtin(BUILTIN_MODELS["smollm2-135m-instruct"], load_settings())
    return make_tiny_model(home / "tiny", tok)


def client(p: int):
    import boto3
    return boto3.client("bedrock", endpoint_url=f"http://127.0.0.1:{p}", region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def write_data(home: Path, n: int) -> str:
    d = home / "s3" / "bench" / "data"
    d.mkdir(parents=True, exist_ok=True)
    things = [("apple", "red"), ("grass", "green"), ("sky", "blue"), ("coal", "black")]
    with (d / "train.jsonl").open("w") as f:
        for i in range(n):
            t, c = things[i % 4]
            f.write(json.dumps({"prompt": f"Colour of {t}?", "completion": c}) + "\n")
    return "s3://bench/data/train.jsonl"


def latency(n_jobs: int, reps: int) -> None:
    from afinar.config import load_settings
    from afinar.jobs.service import JobService
    from afinar.jobs.store import set_fields

    home = Path(tempfile.mkdtemp(prefix="afinar-bench-"))
    tiny = tiny_model(home)
    (home / "afinar.toml").write_text(f'[model_aliases]\ntiny = "{tiny}"\n')
    svc = JobService(load_settings({"home": home}))
    uri = write_data(home, 8)
    t = time.perf_counter()
    statuses = ["Completed", "Failed", "Stopped"]
    for i in range(n_jobs):
        arn = svc.create_job({"jobName": f"job-{i:05d}", "customModelName": f"m-{i:05d}",
                              "roleArn": ROLE, "baseModelIdentifier": "tiny",
                              "trainingDataConfig": {"s3Uri": uri},
                              "outputDataConfig": {"s3Uri": "s3://bench/out/"}})["jobArn"]
        set_fields(svc.engine, arn[-12:], status=statuses[i % 3])
    fill = time.perf_counter() - t
    p = port()
    proc = start(home, p)
    try:
        idle = rss_mb(proc.pid)
        b = client(p)
        b.list_foundation_models()  # warm the connection
        rnd = random.Random(0)

        def timed(fn) -> list[float]:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1000)
            return out

        def http(path: str):
            return lambda: urllib.request.urlopen(f"http://127.0.0.1:{p}{path}").read()

        base = timed(http("/afinar/health"))
        runs = {  # (boto3 end to end, the same request over raw HTTP: the server's share)
            "GetModelCustomizationJob": (
                timed(lambda: b.get_model_customization_job(
                    jobIdentifier=f"job-{rnd.randrange(n_jobs):05d}")),
                timed(lambda: http(f"/model-customization-jobs/job-"
                                   f"{rnd.randrange(n_jobs):05d}")())),
            "ListModelCustomizationJobs (100/page)": (
                timed(lambda: b.list_model_customization_jobs(maxResults=100)),
                timed(http("/model-customization-jobs?maxResults=100"))),
            "List statusEquals=Failed (100/page)": (
                timed(lambda: b.list_model_customization_jobs(statusEquals="Failed",
                                                              maxResults=100)),
                timed(http("/model-customization-jobs?statusEquals=Failed&maxResults=100"))),
            "List page 5 (nextToken)": (
                timed(lambda: b.list_model_customization_jobs(maxResults=100,
                                                              nextToken=_token(400))),
                timed(http(f"/model-customization-jobs?maxResults=100&nextToken="
                           f"{_token(400)}"))),
            "List 10/page": (
                timed(lambda: b.list_model_customization_jobs(maxResults=10)),
                timed(http("/model-customization-jobs?maxResults=10"))),
        }
        after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"store: {n_jobs} jobs (filled in {fill:.1f} s), {reps} calls each, boto3 over HTTP")
    print(f"{'call':<40}{'server p50':>11}{'server p95':>11}{'boto3 p50':>10}"
          f"{'boto3 p95':>10}{'server p95 vs health':>22}")
    hb = pct(base, 0.95)
    print(f"{'health route (baseline)':<40}{statistics.median(base):>11.1f}{hb:>11.1f}"
          f"{'':>20}{1:>21.1f}x")
    for k, (client_ms, raw_ms) in runs.items():
        print(f"{k:<40}{statistics.median(raw_ms):>11.1f}{pct(raw_ms, 0.95):>11.1f}"
              f"{statistics.median(client_ms):>10.1f}{pct(client_ms, 0.95):>10.1f}"
              f"{pct(raw_ms, 0.95) / hb:>21.1f}x")
    print("server = the HTTP request alone (what the server adds); boto3 = end to end, including "
          "botocore parsing the response: each job summary carries 9 ISO-8601 timestamps and "
          "botocore parses each with dateutil (~0.15 ms), so a 100-job page costs the client "
          "~130 ms by itself. Target p95 < 50 ms.")
    print(f"idle server RSS: {idle:.0f} MB before any request, {after:.0f} MB after them "
          f"(target < 300 MB: {'met' if max(idle, after) < 300 else 'NOT met'})")


def _token(offset: int) -> str:
    from afinar.jobs.service import _encode_token
    return _encode_token(offset)


def queue(n: int, concurrency: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="afinar-bench-"))
    tiny = tiny_model(home)
    (home / "afinar.toml").write_text(f'max_concurrent_jobs = {concurrency}\nthreads = 1\n'
                                      f'[model_aliases]\ntiny = "{tiny}"\n')
    uri = write_data(home, 64)
    p = port()
    proc = start(home, p)
    try:
        b = client(p)
        t0 = time.perf_counter()
        arns = [b.create_model_customization_job(
            jobName=f"q-{i}", customModelName=f"qm-{i}", roleArn=ROLE,
            baseModelIdentifier="tiny", trainingDataConfig={"s3Uri": uri},
            outputDataConfig={"s3Uri": "s3://bench/out/"},
            hyperParameters={"epochCount": "2", "learningRate": "0.01"})["jobArn"]
            for i in range(n)]
        submit = time.perf_counter() - t0
        most, get_ms = 0, []
        while True:
            h = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{p}/afinar/health").read())
            most = max(most, len(h["running"]))
            t = time.perf_counter()
            st = [b.get_model_customization_job(jobIdentifier=a)["status"] for a in arns]
            get_ms.append((time.perf_counter() - t) * 1000 / n)
            if all(s in ("Completed", "Failed", "Stopped") for s in st):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"queue: {n} jobs submitted in {submit * 1000:.0f} ms with max_concurrent_jobs="
          f"{concurrency}; {st.count('Completed')} Completed, {st.count('Failed')} Failed; most "
          f"running at once: {most}; all done in {wall:.1f} s; Get while training: p95 "
          f"{pct(get_ms, 0.95):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    latency(a.jobs, a.reps)
    if a.queue:
        queue(a.queue, a.concurrency)


if __name__ == "__main__":
    main()

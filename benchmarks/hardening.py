"""The server's resource bounds, measured on a real `afinar serve`:

1. memory under a 300 MB POST: the server's peak RSS while an unauthenticated client streams
   300 MB at a JSON route of a server that requires auth, and while a client streams 300 MB at
   an API route of a loopback server (max_request_mb 16): both are answered from the headers;
2. the control plane while inference waits: p50/p95 of ListModelCustomizationJobs and of a
   one-line data check, on the idle server and while 100 chat requests (default model, 64
   tokens each) wait for the engine; the ratio busy/idle is in the same run.

    .venv/bin/python benchmarks/hardening.py [--chats 100] [--calls 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(home: Path, toml: str) -> tuple[subprocess.Popen, int]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "afinar.toml").write_text(toml)
    port = free_port()
    env = dict(os.environ, AFINAR_HOME=str(home))
    p = subprocess.Popen([sys.executable, "-m", "afinar.cli.main", "serve", "--port", str(port),
                          "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            call(port, "GET", "/afinar/health")
            return p, port
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("server did not start")


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def big_post(port: int, path: str, total: int, headers: dict) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.putrequest("POST", path)
    for k, v in {**headers, "Content-Length": str(total)}.items():
        c.putheader(k, v)
    c.endheaders()
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(total // len(chunk)):
            c.send(chunk)
    except OSError:
        pass  # answered and closed early: the point
    try:
        return c.getresponse().status
    except OSError:
        return -1
    finally:
        c.close()


def peak_rss_during(pid: int, fn) -> tuple[int, int, object]:
    proc = psutil.Process(pid)
    base, peak, stop = proc.memory_info().rss, [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = fn()
    stop.set()
    t.join()
    return base, peak[0], out


def latencies(port: int, n: int) -> dict:
    out = {}
    for name, (method, path, body, hdrs) in {
        "ListJobs": ("GET", "/model-customization-jobs", None, {}),
        "data check": ("POST", "/afinar/data/check?filename=d.jsonl",
                       b'{"prompt": "a", "completion": "b"}\n',
                       {"Content-Type": "application/octet-stream"}),
    }.items():
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            st, _ = call(port, method, path, body, hdrs)
            ts.append(time.perf_counter() - t0)
            assert st == 200, st
        ts.sort()
        out[name] = (statistics.median(ts), ts[int(0.95 * (len(ts) - 1))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chats", type=int, default=100)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--size-mb", type=int, default=300)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from constrained import cpu_flags
    print(f"CPU: {os.cpu_count()} cores, {cpu_flags()}")
    tmp = Path(tempfile.mkdtemp(prefix="afinar-bench-"))
    total = args.size_mb << 20

    def post_big(p, port, what):
        base, peak, st = peak_rss_during(p.pid, lambda: big_post(
            port, "/model-customization-jobs", total, {"Content-Type": "application/json"}))
        print(f"{args.size_mb} MB {what}: HTTP {st}; server RSS {base / 2**20:.0f} MB before, "
              f"peak {peak / 2**20:.0f} MB (+{(peak - base) / 2**20:.1f} MB)")

    p, port = start(tmp / "auth", 'require_auth = true\napi_keys = ["k"]\n')
    try:
        post_big(p, port, "unauthenticated POST (auth required)")
    finally:
        p.kill()

    p, port = start(tmp / "open", "")
    try:
        post_big(p, port, "POST to an API route (loopback, max_request_mb 16)")
        call(port, "POST", "/v1/chat/completions", json.dumps({  # load the model first
            "model": "smollm2-135m-instruct", "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {"Content-Type": "application/json"})
        idle = latencies(port, args.calls)
        done = []

        def chat(i):
            st, _ = call(port, "POST", "/v1/chat/completions", json.dumps({
                "model": "smollm2-135m-instruct", "max_tokens": 64, "temperature": 0.7,
                "seed": i, "messages": [{"role": "user", "content": f"Tell me a story {i}."}]
            }).encode(), {"Content-Type": "application/json"})
            done.append(st)
        threads = [threading.Thread(target=chat, args=(i,), daemon=True)
                   for i in range(args.chats)]
        for t in threads:
            t.start()
        time.sleep(2)  # let them reach the engine (a benchmark, not a test)
        _, eng = call(port, "GET", "/afinar/engine")
        waiting = json.loads(eng)["queued"]
        busy = latencies(port, args.calls)
        still = args.chats - len(done)
        for t in threads:
            t.join()
        print(f"control plane, idle vs {args.chats} chats in flight ({waiting} queued in the "
              f"engine at the start, {still} unfinished at the end; "
              f"{done.count(200)}/{args.chats} chats answered 200):")
        for name in idle:
            (i50, i95), (b50, b95) = idle[name], busy[name]
            print(f"  {name:<11} p50 {i50 * 1000:7.1f} ms -> {b50 * 1000:7.1f} ms   "
                  f"p95 {i95 * 1000:7.1f} ms -> {b95 * 1000:7.1f} ms  (x{b95 / i95:.1f})")
    finally:
        p.kill()


if __name__ == "__main__":
    main()

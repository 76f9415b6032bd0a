"""Serving throughput, latency and memory, with the default model behind a real `afinar serve`.

1. Baseline, in this process: Hugging Face `generate`, one request at a time (greedy).
2. The server with 1, 4, 8 and 16 concurrent clients (the openai client, streaming chat
   completions): output tokens/s, p50/p95 request latency and p95 time to first token; ratio
   against the baseline. With --vllm-command, the same for afinar on vLLM (serve_backend vllm)
   and for vLLM alone (its own OpenAI server, no afinar in between), side by side.
3. Memory: the server's RSS with the base model loaded, then with five LoRA custom models of it
   (adapters registered in the server's home, served by name) loaded and used.
4. A burst of 100 concurrent requests: errors (or clean 429s beyond the queue limit), and whether
   the server still answers afterwards.

    .venv/bin/python benchmarks/serve_throughput.py [--max-tokens 24] [--requests 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROMPTS = [f"Write one sentence about the number {i}." for i in range(200)]


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def baseline(model_dir: Path, n: int, max_tokens: int, dtype: str = "float32"
             ) -> tuple[float, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 2)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                 dtype=getattr(torch, dtype)).eval()
    toks, lat = 0, []
    t0 = time.perf_counter()
    for p in PROMPTS[:n]:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        lat.append(time.perf_counter() - t)
        toks += out.shape[1] - enc["input_ids"].shape[1]
    print(f"baseline ({dtype}): {toks / n:.1f} output tokens per request on average, "
          f"{toks / (time.perf_counter() - t0):.1f} tokens/s")
    return toks / (time.perf_counter() - t0), lat


def make_adapters(home: Path, base_dir: Path, k: int) -> list[str]:
    """k LoRA adapters of the base (random B: they change the outputs), registered as
    custom models."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(k):
        torch.manual_seed(i)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)), LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        for n_, p in m.named_parameters():
            if "lora_B" in n_:
                torch.nn.init.normal_(p, std=0.01)
        run = home / "runs" / f"lora-{i}"
        m.save_pretrained(str(run / "adapter"))
        name = f"lora-{i}"
        (home / "custom-models").mkdir(parents=True, exist_ok=True)
        (home / "custom-models" / f"{name}.json").write_text(json.dumps({
            "name": name, "model_dir": str(run), "method": "lora",
            "base_model": "smollm2-135m-instruct", "base_path": str(base_dir),
            "lineage": ["smollm2-135m-instruct", name], "created_at": "2026-01-01T00:00:00"}))
        names.append(name)
    return names


def clients(url: str, model: str, a, levels=(1, 4, 8, 16)) -> list[tuple]:
    """(clients, tokens/s, p50 s, p95 s, TTFT p95 s) per concurrency level, streaming chat
    completions through the openai client."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="x", timeout=900, max_retries=0)

    def one(i: int):
        t = time.perf_counter()
        first, n = None, 0
        for ch in client.chat.completions.create(
                model=model, max_tokens=a.max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]):
            if first is None and ch.choices and ch.choices[0].delta.content:
                first = time.perf_counter() - t
            if ch.usage:
                n = ch.usage.completion_tokens
        return n, time.perf_counter() - t, first or 0.0

    one(0)  # loads (and warms) the model
    rows = []
    for c in levels:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(c) as ex:
            res = list(ex.map(one, range(max(a.requests, c))))
        el = time.perf_counter() - t0
        lat, ttft = [r[1] for r in res], [r[2] for r in res]
        rows.append((c, sum(r[0] for r in res) / el, statistics.median(lat), pct(lat, 0.95),
                     pct(ttft, 0.95)))
    return rows


def wait_up(url: str, path: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + path, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up")


def side_by_side(a, base_dir: Path, home: Path, base_tps: float) -> None:
    """afinar embedded, and (with --vllm-command) afinar on vLLM and vLLM alone; the same
    clients and prompts."""
    import shlex

    vargs = ["--max-model-len", "2048", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.3"]
    table = {}
    names = ["afinar embedded"] + (["afinar on vLLM", "vLLM alone"] if a.vllm_command else [])
    for name in names:
        p = port()
        url = f"http://127.0.0.1:{p}"
        h = home / name.replace(" ", "-")
        h.mkdir(parents=True, exist_ok=True)
        if name == "vLLM alone":
            cmd = shlex.split(a.vllm_command) + ["--model", str(base_dir), "--served-model-name",
                                                  "smollm2-135m-instruct", "--host", "127.0.0.1",
                                                  "--port", str(p)] + vargs
            env = dict(os.environ)
        else:
            (h / "afinar.toml").write_text(
                ('serve_backend = "vllm"\nvllm_command = ' + json.dumps(a.vllm_command) +
                 "\nvllm_args = " + json.dumps(vargs) + "\n") if "vLLM" in name else "")
            cmd = [sys.executable, "-m", "afinar.cli.main", "serve", "--port", str(p),
                   "--log-level", "warning"]
            env = dict(os.environ, AFINAR_HOME=str(h))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_up(url, "/health" if name == "vLLM alone" else "/afinar/health")
            table[name] = clients(url, "smollm2-135m-instruct", a)
            import psutil
            procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(True)
            table[name + " rss"] = sum(x.memory_info().rss for x in procs) / 2**20
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"side by side ({a.max_tokens} tokens per request, streaming chat completions; "
          f"baseline HF generate one at a time {base_tps:.1f} tokens/s):")
    print(f"{'':>16}{'clients':>8}{'tokens/s':>10}{'vs HF':>8}{'p50 s':>8}{'p95 s':>8}"
          f"{'TTFT p95':>10}")
    for name in names:
        for c, tps, p50, p95, ttft in table[name]:
            print(f"{name:>16}{c:>8}{tps:>10.1f}{tps / base_tps:>7.2f}x{p50:>8.2f}{p95:>8.2f}"
                  f"{ttft:>10.2f}")
        print(f"{'':>16} memory (server and its children): {table[name + ' rss']:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--vllm-command", default=os.environ.get("AFINAR_TEST_VLLM_COMMAND"),
                    help="how vLLM's OpenAI server starts: also measure afinar on vLLM and "
                         "vLLM alone")
    a = ap.parse_args()

    from afinar.config import load_settings
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin

    base_dir = ensure_builtin(BUILTIN_MODELS["smollm2-135m-instruct"], load_settings())
    home = Path(tempfile.mkdtemp(prefix="afinar-serve-"))
    adapters = make_adapters(home, base_dir, 5)

    base_tps, base_lat = baseline(base_dir, 8, a.max_tokens)
    baseline(base_dir, 8, a.max_tokens, "bfloat16")  # printed beside it: HF in bf16
    p = port()
    env = dict(os.environ, AFINAR_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "afinar.cli.main", "serve", "--port", str(p),
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{p}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/afinar/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3
    from botocore.config import Config
    rt = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y",
                      config=Config(retries={"max_attempts": 0}, read_timeout=600,
                                    max_pool_connections=128))

    def ask(i: int, model: str = "smollm2-135m-instruct"):
        t = time.perf_counter()
        r = rt.converse(modelId=model, messages=[{"role": "user", "content": [
            {"text": PROMPTS[i % len(PROMPTS)]}]}], inferenceConfig={"maxTokens": a.max_tokens})
        return r["usage"]["outputTokens"], time.perf_counter() - t

    try:
        side_by_side(a, base_dir, home, base_tps)
        idle = rss_mb(proc.pid)
        ask(0)  # load the base model
        one_model = rss_mb(proc.pid)
        print(f"baseline: HF generate one at a time: {base_tps:.1f} tokens/s, p50 "
              f"{statistics.median(base_lat):.2f} s ({a.max_tokens} tokens per request)")
        print(f"{'clients':>8}{'tokens/s':>10}{'vs HF':>8}{'p50 s':>8}{'p95 s':>8}")
        for c in (1, 4, 8):
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(c) as ex:
                res = list(ex.map(ask, range(a.requests)))
            el = time.perf_counter() - t0
            tps = sum(r[0] for r in res) / el
            lat = [r[1] for r in res]
            st = json.loads(urllib.request.urlopen(f"{url}/afinar/engine").read())["stats"]
            print(f"{c:>8}{tps:>10.1f}{tps / base_tps:>7.2f}x{statistics.median(lat):>8.2f}"
                  f"{pct(lat, 0.95):>8.2f}   ({sum(r[0] for r in res) / len(res):.1f} tokens "
                  f"per request; engine so far: {st['requests']} requests in {st['batches']} "
                  f"batches)")
        for name in adapters:
            ask(1, name)
        five = rss_mb(proc.pid)
        print(f"server RSS: idle {idle:.0f} MB, base loaded {one_model:.0f} MB, with 5 LoRA "
              f"custom models loaded and used {five:.0f} MB (+{five - one_model:.0f} MB, "
              f"{(five - one_model) / max(one_model - idle, 1):.1%} of the base's own cost)")
        t0 = time.perf_counter()
        errors, throttled = 0, 0
        with cf.ThreadPoolExecutor(100) as ex:
            futs = [ex.submit(ask, i) for i in range(100)]
            for f in futs:
                try:
                    f.result()
                except rt.exceptions.ThrottlingException:
                    throttled += 1
                except Exception:
                    errors += 1
        alive = ask(3)[0] == a.max_tokens
        print(f"burst of 100 concurrent: {errors} errors, {throttled} throttled (429), "
              f"{time.perf_counter() - t0:.1f} s; server still answering: {alive}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()

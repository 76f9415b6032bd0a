"""How well the defaults transfer: each task of benchmarks/defaults_tasks.py trained with
`afinar train` and nothing but the data and a name (the defaults, as a new user runs it), then
`afinar eval` of the base and the tuned model on the held-out rows. One table: exact match base
vs tuned, and wall time. Extra settings (`--set learning_rate=1e-3`) go to every task, for
searching what each task would have needed.

    .venv/bin/python benchmarks/defaults_suite.py [--tasks shipping_api,date_format]
        [--base-model smollm2-135m-instruct] [--train 400] [--test 60] [--set KEY=VALUE ...]

Results also go to <out>/results.json. Run on a quiet machine: the times are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_tasks import TASKS, make  # noqa: E402


def cpu_features() -> str:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown CPU"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def _afinar(args: list[str], home: Path) -> dict:
    env = dict(os.environ, AFINAR_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "afinar.cli.main", *args, "--json"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"afinar {' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def run_task(task: str, base: str, out: Path, n_train: int, n_test: int,
             extra: list[str]) -> dict:
    from afinar.data.readers import write_jsonl

    d = out / task
    d.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = make(task, n_train, n_test)
    write_jsonl(d / "train.jsonl", train_rows)
    write_jsonl(d / "test.jsonl", test_rows)
    name = f"suite-{task.replace('_', '-')}-{int(time.time())}"
    t0 = time.time()
    tr = _afinar(["train", "--train-data", str(d / "train.jsonl"), "--base-model", base,
                  "--name", name, "--output-dir", str(d / "run"), *extra], out / "home")
    train_s = time.time() - t0
    ev = _afinar(["eval", "--model", base, "--model", name, "--data", str(d / "test.jsonl")],
                 out / "home")
    em = {m["id"]: m["metrics"]["exact_match"] for m in ev["models"]}
    return {"task": task, "train_examples": n_train, "test_examples": n_test,
            "base": em[base], "tuned": em[name], "train_seconds": round(train_s, 1),
            "total_seconds": round(time.time() - t0, 1), "steps": tr.get("steps"),
            "settings": extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--base-model", default="smollm2-135m-instruct")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting for every task (e.g. learning_rate=1e-3)")
    p.add_argument("--out", help="working folder (default: a new temporary one)")
    a = p.parse_args(argv)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; the suite has {', '.join(TASKS)}")
    extra = []
    for kv in a.set:
        k, _, v = kv.partition("=")
        extra += [f"--{k.replace('_', '-')}", v]
    out = Path(a.out or tempfile.mkdtemp(prefix="afinar-suite-"))
    print(f"CPU: {cpu_features()}; {os.cpu_count()} cores; base {a.base_model}; "
          f"{a.train} train / {a.test} held out per task; settings: "
          f"{' '.join(a.set) or 'defaults'}", flush=True)
    results = []
    for t in tasks:
        r = run_task(t, a.base_model, out, a.train, a.test, extra)
        results.append(r)
        print(f"  {t:<16} base {r['base'] * 100:5.1f}%  tuned {r['tuned'] * 100:5.1f}%  "
              f"train {r['train_seconds']:6.0f} s  ({r['steps']} steps)", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| task | base EM | tuned EM | train s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['base'] * 100:.1f}% | {r['tuned'] * 100:.1f}% | "
              f"{r['train_seconds']:.0f} |")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

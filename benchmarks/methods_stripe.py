"""The customization methods on the Stripe task (afinar's demo task), measured as a user runs
them, through the CLI:

  rft: the same weak SFT start, then reinforcement fine-tuning on new prompts, each sampled
       answer scored by a grader (default: F1 of the answer's JSON fields against the
       reference call's); the reference calls are never trained on.
  distill: the demo's tuned model (`afinar demo`, 400 labelled examples) as the teacher, the
       base model as the student, trained on the teacher's answers to new unlabelled requests
       (--pairs of them); student vs teacher on the demo's held-out test requests.
  dpo: a weak SFT start (a few labelled examples), then preference pairs on new prompts —
       the correct call preferred over a corrupted one (a wrong operation, amount, currency,
       id or a missing parameter) and, with --rejected model/both, over the SFT model's own
       wrong answers — and held-out exact match before and after.

    .venv/bin/python benchmarks/methods_stripe.py dpo|rft|distill [--sft-examples 40] [--pairs 400]
        [--test 100] [--rejected corrupt|model|both] [--set KEY=VALUE ...] [--out DIR]

Prints the CPU, each stage's wall time and a table; results also go to <out>/results-<method>-<time>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_suite import _afinar, cpu_features  # noqa: E402

from afinar.data.readers import write_jsonl  # noqa: E402
from afinar.data.schema import serialize_value  # noqa: E402
from afinar.demo.stripe_data import SYSTEM, generate  # noqa: E402

CALLS = ["stripe.subscriptions.create", "stripe.customers.create",
         "stripe.payment_intents.create", "stripe.refunds.create",
         "stripe.subscriptions.cancel", "stripe.invoices.create"]


def corrupt(output: dict, rng: random.Random) -> dict:
    """The reference call with one plausible mistake."""
    bad = copy.deepcopy(output)
    params = bad["parameters"]
    kinds = ["call", "drop"] + (["number"] if any(isinstance(v, int) for v in params.values())
                                else []) + (["string"] if any(
                                    isinstance(v, str) for v in params.values()) else [])
    kind = rng.choice(kinds)
    if kind == "call":
        bad["api_call"] = rng.choice([c for c in CALLS if c != output["api_call"]])
    elif kind == "drop" and len(params) > 1:
        params.pop(rng.choice(sorted(params)))
    elif kind == "number":
        k = rng.choice(sorted(k for k, v in params.items() if isinstance(v, int)))
        params[k] = params[k] * rng.choice([10, 100]) if params[k] else 1
    else:
        k = rng.choice(sorted(k for k, v in params.items() if isinstance(v, str)))
        v = params[k]
        params[k] = v.upper() if v.lower() == v and len(v) <= 4 else v[:-1]
    if bad == output:  # a one-parameter call whose drop was refused: change the operation
        bad["api_call"] = rng.choice([c for c in CALLS if c != output["api_call"]])
    return bad


def _prompt(row: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"}]


def run_dpo(a, out: Path, extra: list[str]) -> dict:
    home, rng = out / "home", random.Random(7)
    rows = generate(a.sft_examples + a.pairs + a.test, seed=11)
    sft, pref, test = (rows[:a.sft_examples], rows[a.sft_examples:a.sft_examples + a.pairs],
                       rows[a.sft_examples + a.pairs:])
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "pref_prompts.jsonl", pref)
    times, stamp = {}, int(time.time())
    t = time.time()
    _afinar(["train", "--train-data", str(out / "sft.jsonl"), "--base-model", a.base_model,
             "--name", f"m-sft-{stamp}", "--output-dir", str(out / "sft")], home)
    times["sft_train"] = time.time() - t
    t = time.time()
    ev = _afinar(["eval", "--model", f"m-sft-{stamp}", "--data", str(out / "test.jsonl")], home)
    times["eval"] = time.time() - t
    em_sft = ev["models"][0]["metrics"]["exact_match"]
    print(f"  SFT on {a.sft_examples} examples: held-out exact match {em_sft:.1%} "
          f"({times['sft_train']:.0f} s)", flush=True)
    pairs, from_model = [], 0
    mine = {}
    if a.rejected in ("model", "both"):
        t = time.time()
        got = _afinar(["eval", "--model", f"m-sft-{stamp}", "--data",
                       str(out / "pref_prompts.jsonl")], home)
        times["sample_sft"] = time.time() - t
        mine = {i: e["outputs"][f"m-sft-{stamp}"] for i, e in enumerate(got["examples"])
                if not e["exact_match"][f"m-sft-{stamp}"]}
    for i, r in enumerate(pref):
        good = serialize_value(r["output"])
        rejected = []
        if i in mine:
            rejected.append(mine[i])
            from_model += 1
        if a.rejected in ("corrupt", "both") or not rejected:
            rejected.append(serialize_value(corrupt(r["output"], rng)))
        pairs += [{"prompt": _prompt(r), "chosen": good, "rejected": bad} for bad in rejected
                  if bad != good]
    write_jsonl(out / "pairs.jsonl", pairs)
    print(f"  {len(pairs)} pairs ({from_model} with the SFT model's own wrong answer)",
          flush=True)
    t = time.time()
    tr = _afinar(["train", "--type", "dpo", "--train-data", str(out / "pairs.jsonl"),
                  "--base-model", f"m-sft-{stamp}", "--name", f"m-dpo-{stamp}",
                  "--output-dir", str(out / "dpo"), *extra], home)
    times["dpo_train"] = time.time() - t
    ev = _afinar(["eval", "--model", f"m-dpo-{stamp}", "--data", str(out / "test.jsonl")], home)
    em_dpo = ev["models"][0]["metrics"]["exact_match"]
    res = {"method": "dpo", "sft_examples": a.sft_examples, "pairs": len(pairs),
           "pairs_from_model": from_model, "test": a.test, "sft_exact_match": em_sft,
           "dpo_exact_match": em_dpo, "dpo_validation": tr.get("validation"),
           "dpo_steps": tr.get("steps"), "auto": tr.get("auto_hyperparameters"),
           "seconds": {k: round(v, 1) for k, v in times.items()}, "settings": extra}
    print(f"  DPO on {len(pairs)} pairs: held-out exact match {em_sft:.1%} -> {em_dpo:.1%}; "
          f"validation {tr.get('validation')}; {times['dpo_train']:.0f} s", flush=True)
    return res


def run_rft(a, out: Path, extra: list[str]) -> dict:
    """A weak SFT start, then reinforcement fine-tuning on new prompts scored by a grader
    against their reference calls (never trained on as targets)."""
    home = out / "home"
    rows = generate(a.sft_examples + a.pairs + a.test, seed=11)
    sft, rl, test = (rows[:a.sft_examples], rows[a.sft_examples:a.sft_examples + a.pairs],
                     rows[a.sft_examples + a.pairs:])
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "test.jsonl", test)
    write_jsonl(out / "prompts.jsonl", [{"messages": _prompt(r),
                                         "reference_answer": serialize_value(r["output"])}
                                        for r in rl])
    times, stamp = {}, int(time.time())
    sft_name = a.start or f"m-sft-{stamp}"
    if not a.start:
        t = time.time()
        _afinar(["train", "--train-data", str(out / "sft.jsonl"), "--base-model",
                 a.base_model, "--name", sft_name, "--output-dir", str(out / "sft")], home)
        times["sft_train"] = time.time() - t
    ev = _afinar(["eval", "--model", sft_name, "--data", str(out / "test.jsonl")], home)
    em_sft = ev["models"][0]["metrics"]["exact_match"]
    print(f"  start {sft_name}: held-out exact match {em_sft:.1%}", flush=True)
    t = time.time()
    tr = _afinar(["train", "--type", "rft", "--grader", a.grader, "--train-data",
                  str(out / "prompts.jsonl"), "--base-model", sft_name, "--name",
                  f"m-rft-{stamp}", "--output-dir", str(out / f"rft-{stamp}"), *extra], home)
    times["rft_train"] = time.time() - t
    ev = _afinar(["eval", "--model", f"m-rft-{stamp}", "--data", str(out / "test.jsonl")],
                 home)
    em_rft = ev["models"][0]["metrics"]["exact_match"]
    log = [json.loads(x) for x in (out / f"rft-{stamp}" / "training_artifacts" /
                                   "training_log.jsonl")
           .read_text().splitlines()]
    rewards = [r["mean_reward"] for r in log if r["kind"] == "train"]
    k = max(1, len(rewards) // 5)
    res = {"method": "rft", "start": sft_name, "prompts": a.pairs, "test": a.test,
           "grader": a.grader, "start_exact_match": em_sft, "rft_exact_match": em_rft,
           "steps": tr.get("steps"), "mean_reward_first_fifth": sum(rewards[:k]) / k,
           "mean_reward_last_fifth": sum(rewards[-k:]) / k, "validation": tr.get("validation"),
           "seconds": {k2: round(v, 1) for k2, v in times.items()}, "settings": extra}
    print(f"  RFT on {a.pairs} prompts ({a.grader} grader): held-out exact match "
          f"{em_sft:.1%} -> {em_rft:.1%}; mean reward {res['mean_reward_first_fifth']:.3f} "
          f"(first fifth of steps) -> {res['mean_reward_last_fifth']:.3f} (last); "
          f"{times['rft_train']:.0f} s", flush=True)
    return res


def run_distill(a, out: Path, extra: list[str]) -> dict:
    """Teacher: the demo's model. Student: the base, on the teacher's answers to unlabelled
    requests (instruction + input, no output)."""
    home, times = out / "home", {}
    t = time.time()
    demo = _afinar(["demo", "--output-dir", str(out / "demo")], home)
    times["demo"] = time.time() - t
    teacher, test = demo["paths"]["name"], out / "demo" / "data" / "test.jsonl"
    rows = generate(a.pairs, seed=23)
    write_jsonl(out / "prompts.jsonl", [{"instruction": r["instruction"], "input": r["input"]}
                                        for r in rows])
    t = time.time()
    tr = _afinar(["train", "--type", "distill", "--teacher", teacher, "--train-data",
                  str(out / "prompts.jsonl"), "--base-model", a.base_model, "--name",
                  "student", "--output-dir", str(out / "student"), *extra], home)
    times["distill_train"] = time.time() - t
    log = (out / "student" / "training_artifacts" / "training_log.jsonl")
    t = time.time()
    ev = _afinar(["eval", "--model", a.base_model, "--model", teacher, "--model", "student",
                  "--data", str(test)], home)
    times["eval"] = time.time() - t
    em = {m["id"]: m["metrics"]["exact_match"] for m in ev["models"]}
    res = {"method": "distill", "teacher": teacher, "prompts": a.pairs,
           "test": str(test), "base_exact_match": em[a.base_model],
           "teacher_exact_match": em[teacher], "student_exact_match": em["student"],
           "distillation": tr.get("distillation"), "steps": tr.get("steps"),
           "auto": tr.get("auto_hyperparameters"), "log": str(log),
           "seconds": {k: round(v, 1) for k, v in times.items()}, "settings": extra}
    print(f"  distillation on {a.pairs} unlabelled requests: base {em[a.base_model]:.1%}, "
          f"teacher {em[teacher]:.1%}, student {em['student']:.1%} held-out exact match; "
          f"teacher + student training {times['distill_train']:.0f} s", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=["dpo", "rft", "distill"])
    p.add_argument("--grader", default="fields", help="rft: the grader (default fields)")
    p.add_argument("--start", help="rft: start from this custom model (in --out's home) "
                   "instead of a new SFT run")
    p.add_argument("--base-model", default="smollm2-135m-instruct")
    p.add_argument("--sft-examples", type=int, default=40)
    p.add_argument("--pairs", type=int, default=400, help="dpo: pairs; rft, distill: prompts")
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--rejected", choices=["corrupt", "model", "both"], default="corrupt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the method's training run (e.g. beta=0.2)")
    p.add_argument("--out", help="working folder (default: a new temporary one)")
    a = p.parse_args(argv)
    extra = []
    for kv in a.set:
        k, _, v = kv.partition("=")
        extra += [f"--{k.replace('_', '-')}", v]
    out = Path(a.out or tempfile.mkdtemp(prefix=f"afinar-{a.method}-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_features()}; {os.cpu_count()} cores; base {a.base_model}; "
          f"{a.method}; settings: {' '.join(a.set) or 'defaults'}", flush=True)
    res = {"dpo": run_dpo, "rft": run_rft, "distill": run_distill}[a.method](a, out, extra)
    name = f"results-{a.method}-{int(time.time())}.json"
    (out / name).write_text(json.dumps(res, indent=2))
    print(f"results: {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

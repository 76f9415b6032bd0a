"""`afinar demo tools`: the Stripe scenario built the way applications build it, with tool
calling. Six Stripe operations become tools (JSON schemas); synthetic conversations (Spanish
and English) call them, some with the whole loop (call -> tool result -> answer). The default
model is LoRA-fine-tuned on them, then `afinar serve` runs on loopback and the unchanged
`openai` client calls base and tuned models with `tools=...` on held-out requests: the returned
`tool_calls` are scored (right function, exact arguments), and one full loop is run.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from afinar.config import Settings
from afinar.data.check import check_file
from afinar.data.readers import write_jsonl
from afinar.demo import output_dir
from afinar.demo.stripe_data import requests
from afinar.errors import DataError
from afinar.progress import ProgressCallback, ProgressEvent, null_progress

SYSTEM = "You operate a Stripe account through its tools."
_MONEY = {"type": "integer", "description": "smallest currency unit (cents)"}
_CUR = {"type": "string", "enum": ["usd", "eur", "gbp", "mxn"]}


def _tool(name: str, desc: str, props: dict, required: list[str] | None = None) -> dict:
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required or list(props),
        "additionalProperties": False}}}


TOOLS = [
    _tool("create_subscription", "Subscribe a customer to a recurring price", {
        "customer": {"type": "string"}, "items": {"type": "array", "items": {
            "type": "object", "properties": {"price_data": {"type": "object", "properties": {
                "currency": _CUR, "unit_amount": _MONEY, "recurring": {
                    "type": "object", "properties": {"interval": {
                        "enum": ["week", "month", "year"]}}}}}}}}}),
    _tool("create_customer", "Create a customer", {"name": {"type": "string"},
                                                   "email": {"type": "string"}}),
    _tool("create_payment_intent", "Charge a customer", {
        "customer": {"type": "string"}, "amount": _MONEY, "currency": _CUR}),
    _tool("create_refund", "Refund a payment", {"payment_intent": {"type": "string"},
                                                "amount": _MONEY}),
    _tool("cancel_subscription", "Cancel a subscription", {"subscription": {"type": "string"}}),
    _tool("create_invoice", "Invoice a customer", {"customer": {"type": "string"},
                                                   "days_until_due": {"type": "integer"}}),
]
TOOL_OF = {"stripe.subscriptions.create": "create_subscription",
           "stripe.customers.create": "create_customer",
           "stripe.paymentIntents.create": "create_payment_intent",
           "stripe.refunds.create": "create_refund",
           "stripe.subscriptions.cancel": "cancel_subscription",
           "stripe.invoices.create": "create_invoice"}


def conversations(n: int, seed: int = 0, loop_every: int = 4) -> list[dict]:
    """n OpenAI fine-tuning records with tools; every `loop_every`-th one carries the tool's
    result and the assistant's closing answer."""
    rng = random.Random(seed)
    rows = []
    for req, call, params in requests(n, rng):
        name = TOOL_OF[call]
        cid = f"call_{len(rows)}"
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": req},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": cid, "type": "function", "function": {
                        "name": name, "arguments": json.dumps(params, ensure_ascii=False)}}]}]
        if len(rows) % loop_every == 0:
            oid = f"{name.split('_')[-1][:3]}_{rng.randrange(10**6):06d}"
            msgs += [{"role": "tool", "tool_call_id": cid,
                      "content": json.dumps({"id": oid, "status": "ok"})},
                     {"role": "assistant", "content": f"Done: {name.replace('_', ' ')} "
                                                      f"({oid})."}]
        rows.append({"tools": TOOLS, "messages": msgs, "call": {"name": name,
                                                                "arguments": params}})
    rng.shuffle(rows)
    return rows


@dataclass
class ToolsDemoOptions:
    train_examples: int = 240
    test_examples: int = 60
    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 2e-3
    lora_r: int = 16
    lora_layers: int | None = 20
    max_length: int = 1024  # a tool-calling example is ~720 tokens here, with the loop ~820
    seed: int = 0
    base_model: str | None = None
    output_dir: str | None = None
    concurrency: int = 8


def run_tools_demo(opts: ToolsDemoOptions, settings: Settings,
                   progress: ProgressCallback = null_progress,
                   say: Callable[[str], None] = lambda s: None) -> dict:
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    t0 = time.time()
    base = opts.base_model or settings.default_model
    out, stamp = output_dir(settings, opts.output_dir, "tools")
    rows = conversations(opts.train_examples + opts.test_examples, opts.seed)
    train_rows, test_rows = rows[:opts.train_examples], rows[opts.train_examples:]
    say(f"[1/4] {len(rows)} synthetic tool-calling conversations ({len(TOOLS)} Stripe tools, "
        f"Spanish and English): {len(train_rows)} to train on, {len(test_rows)} held out")
    data = out / "data" / "train.jsonl"
    write_jsonl(data, [{"tools": r["tools"], "messages": r["messages"]} for r in train_rows])
    write_jsonl(out / "data" / "test.jsonl", test_rows)
    rep = check_file(data)
    if not rep.ok:
        raise DataError(f"demo data failed its check: {rep.errors[:3]}")
    say(f"[2/4] Data check: {rep.valid}/{rep.records} valid, schema {rep.schema}")
    name = f"stripe-tools-{stamp}"
    say(f"[3/4] LoRA fine-tuning {base} ({opts.epochs} epochs, lr {opts.learning_rate})")
    t = time.time()
    result = train(parse_train_config({
        "train_data": str(data), "base_model": base, "output_dir": str(out / "model"),
        "name": name, "epochs": opts.epochs, "batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate, "lora_r": opts.lora_r,
        "lora_alpha": opts.lora_r * 2, "lora_layers": opts.lora_layers,
        "max_length": opts.max_length, "seed": opts.seed, "checkpoint_every": 0,
        "lora_dropout": 0.0, "warmup_steps": 5, "merge": False,
        # every example trains: the demo measures on its own held-out requests (above)
        "validation_split": 0}), settings, progress)
    train_s = time.time() - t
    say(f"    {result.steps} steps, loss {result.first_loss:.3f} -> {result.train_loss:.3f}, "
        f"{result.tokens_per_second:.0f} tokens/s, {train_s:.0f} s")
    say(f"[4/4] Serving on 127.0.0.1; the openai client calls base and tuned with tools on "
        f"{len(test_rows)} held-out requests")
    t = time.time()
    # the demo's own base model may be a path: the server it starts serves it by that name
    served = settings.model_copy(update={"model_aliases": {**settings.model_aliases,
                                                           base: base}})
    with _served(served) as url:
        scores = {m: score_tool_calls(url, m, test_rows, opts.concurrency, progress)
                  for m in (base, name)}
        loop = full_loop(url, name, test_rows[0])
    report = {"models": [{"model": m} | s["metrics"] for m, s in scores.items()],
              "examples": [{"request": r["messages"][1]["content"], "expected": r["call"]}
                           | {m: scores[m]["calls"][i] for m in scores}
                           for i, r in enumerate(test_rows)],
              "loop": loop, "timings_s": {"train": round(train_s, 1),
                                          "evaluate": round(time.time() - t, 1),
                                          "total": round(time.time() - t0, 1)},
              "training": {"steps": result.steps, "first_loss": result.first_loss,
                           "final_loss": result.train_loss,
                           "tokens_per_second": result.tokens_per_second},
              "name": name, "output_dir": str(out)}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False),
                                     encoding="utf-8")
    return report


class _served:
    """`afinar serve` (inference only) on a free loopback port, in a thread."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __enter__(self) -> str:
        import uvicorn

        from afinar.serve.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = uvicorn.Config(create_app(self.settings, start_scheduler=False),
                             host="127.0.0.1", port=port, log_level="warning",
                             access_log=False)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def score_tool_calls(url: str, model: str, rows: list[dict], concurrency: int = 8,
                     progress: ProgressCallback = null_progress) -> dict:
    """Right function and exact arguments of the first returned tool call, per request."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="afinar", max_retries=0, timeout=600)

    def one(r: dict):
        resp = client.chat.completions.create(model=model, messages=r["messages"][:2],
                                              tools=TOOLS, max_tokens=160, temperature=0)
        calls = resp.choices[0].message.tool_calls or []
        if not calls:
            return None
        try:
            args = json.loads(calls[0].function.arguments)
        except ValueError:
            args = None
        return {"name": calls[0].function.name, "arguments": args}

    got = []
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for i, c in enumerate(pool.map(one, rows)):
            got.append(c)
            progress(ProgressEvent(f"score {model}", i + 1, len(rows)))
    n = len(rows)
    right = [c is not None and c["name"] == r["call"]["name"] for c, r in zip(got, rows,
                                                                              strict=True)]
    exact = [ok and c["arguments"] == r["call"]["arguments"] for ok, c, r in zip(
        right, got, rows, strict=True)]
    return {"calls": got, "metrics": {
        "tool_call_rate": round(sum(c is not None for c in got) / n, 3),
        "right_function": round(sum(right) / n, 3), "exact_arguments": round(sum(exact) / n, 3)}}


def full_loop(url: str, model: str, row: dict) -> dict:
    """One whole loop: the model calls a tool, gets its result, answers in text."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="afinar", max_retries=0, timeout=600)
    msgs = row["messages"][:2]
    first = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS,
                                           max_tokens=160, temperature=0).choices[0]
    if not first.message.tool_calls:
        return {"request": msgs[1]["content"], "call": None, "answer": first.message.content}
    call = first.message.tool_calls[0]
    result = json.dumps({"id": "obj_123456", "status": "ok"})
    msgs = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS,
                                           max_tokens=60, temperature=0).choices[0]
    return {"request": row["messages"][1]["content"], "call": {
        "name": call.function.name, "arguments": json.loads(call.function.arguments)},
        "tool_result": result, "answer": final.message.content,
        "finish_reason": final.finish_reason}

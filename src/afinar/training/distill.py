"""Distillation: a teacher model answers the prompts; the student is fine-tuned on its answers.

The teacher (inference/teachers.py) is any model afinar serves, run through the serving
engine's continuous batching, or an external OpenAI-compatible endpoint registered in
afinar.toml's [teachers] table. Prompts are prompt records (data/prompts.py).

The answers are written as they arrive, a window of prompts at a time, to
<run>/distillation/<role>_responses.jsonl: OpenAI chat records (the dataset the student trains
on, kept with the run), each with the `source_line` of its prompt and `answered_by` (teacher,
or record). Answers cut at
max_new_tokens, empty answers and failed calls go to <role>_rejected.jsonl with the reason, not
into the training data. A run stopped or killed mid-way asks the teacher only for what is
missing when it starts again. With use_prompt_response, a record that carries its own answer
keeps it and the teacher is not asked.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.prompts import FORMS, openai_record, read_prompts
from afinar.errors import AfinarError, DataError
from afinar.progress import ProgressCallback, ProgressEvent

WINDOW = 64  # prompts handed to the teacher together (the engine batches them continuously)


class Stopped(AfinarError):
    """The run was asked to stop while the teacher was answering; its answers so far are kept."""
    exit_code = 130


@dataclass
class Distilled:
    path: Path  # the responses the student trains on
    prompts: int
    from_teacher: int = 0  # answered by the teacher in this run (the rest: earlier, or kept)
    from_records: int = 0  # use_prompt_response: the records' own answers
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    seconds: float = 0.0

    def describe(self, role: str) -> str:
        kept = self.prompts - sum(self.rejected.values())
        s = f"{role} data: {kept} of {self.prompts} prompts answered"
        if self.from_records:
            s += f" ({self.from_records} with the record's own answer)"
        if self.rejected:
            s += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.rejected.items())
        return s + f"; kept in {self.path}"


# -- the dataset ----------------------------------------------------------------------------
def _written(path: Path) -> list[dict]:
    """The lines already written (a restarted run); a line cut by a crash is dropped."""
    if not path.exists():
        return []
    good = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            int(rec["source_line"])
        except (ValueError, KeyError, TypeError):
            break
        good.append(rec)
    path.write_text("".join(json.dumps(x) + "\n" for x in good), encoding="utf-8")
    return good


def distil(path: str, out_dir: Path, role: str, teacher_factory: Callable[[], object],
           progress: ProgressCallback, should_stop: Callable[[], bool],
           use_prompt_response: bool = False) -> Distilled:
    """The teacher's answers to every prompt of `path`, written to out_dir (see the module
    doc). Raises DataError (every bad record, with line and field) before the teacher is
    loaded, and Stopped when should_stop() turns true."""
    read, records, issues = read_prompts(path)
    if issues:
        raise DataError(f"{path}: {len(issues)} problem(s) in the {role} prompts; the teacher "
                        f"was not asked", issues,
                        hint=f"distillation takes prompt records: {FORMS}")
    if not records:
        raise DataError(f"{path}: no {role} prompts")
    out_dir.mkdir(parents=True, exist_ok=True)
    kept_f, rej_f = out_dir / f"{role}_responses.jsonl", out_dir / f"{role}_rejected.jsonl"
    kept_before, rejected_before = _written(kept_f), _written(rej_f)
    done = {x["source_line"] for x in kept_before + rejected_before}
    res = Distilled(kept_f, len(records), from_records=sum(
        x.get("answered_by") == "record" for x in kept_before))
    res.rejected.update(x["reason"] for x in rejected_before)
    todo = [r for r in records if r.line not in done]
    started = time.time()
    with open(kept_f, "a", encoding="utf-8") as kept, open(rej_f, "a", encoding="utf-8") as rej:
        if use_prompt_response:
            for r in [r for r in todo if r.answer is not None]:
                kept.write(json.dumps(openai_record(r.messages + [r.answer], r.tools,
                                                    source_line=r.line, answered_by="record"))
                           + "\n")
                res.from_records += 1
            todo = [r for r in todo if r.answer is None]
        teacher = teacher_factory() if todo else None
        try:
            total, n = len(records), len(records) - len(todo)
            progress(ProgressEvent("teacher", n, total, message=f"teacher answering {role} "
                                   f"prompts" + (f" ({n} already answered)" if n else "")))
            for s in range(0, len(todo), WINDOW):
                if should_stop():
                    raise Stopped(f"stopped while the teacher answered the {role} prompts: "
                                  f"{n} of {total} done, kept in {kept_f}",
                                  hint="run the same command again to continue from there")
                batch = todo[s:s + WINDOW]
                for r, a in zip(batch, teacher.answer(batch), strict=True):
                    if a.message is None:
                        rej.write(json.dumps({"source_line": r.line, "reason": a.problem.split(
                            ":")[0], "detail": a.problem}) + "\n")
                        res.rejected[a.problem.split(":")[0]] += 1
                    else:
                        kept.write(json.dumps(openai_record(
                            r.messages + [a.message], r.tools, source_line=r.line,
                            answered_by="teacher")) + "\n")
                        res.from_teacher += 1
                kept.flush()
                rej.flush()
                n += len(batch)
                progress(ProgressEvent("teacher", n, total))
        finally:
            if teacher is not None:
                teacher.close()
    res.seconds = time.time() - started
    if res.rejected and sum(res.rejected.values()) == res.prompts:
        raise DataError(f"the teacher gave no usable answer to any of the {res.prompts} {role} "
                        f"prompts (" + ", ".join(f"{n} {w}" for w, n in res.rejected.items())
                        + f"); see {rej_f}", hint="check the teacher model, or raise "
                        "max_new_tokens if the answers were cut")
    return res


# -- prompts from the server's invocation log -------------------------------------------------
def prompts_from_logs(files: list[Path], filters: dict | None, use_prompt_response: bool
                      ) -> tuple[list[dict], Counter]:
    """Prompt records (data/prompts.py) from invocation-log files
    (inference/invocation_log.py): Converse, InvokeModel (any body family) and OpenAI chat
    calls, filtered by requestMetadata; with use_prompt_response each keeps the logged answer.
    Returns the records and what was left out, by reason."""
    from afinar.inference.invocation_log import matches, read_logs

    rows, skipped = [], Counter()
    for f, n, rec in read_logs(files):
        if not isinstance(rec, dict) or rec.get("schemaType") != "ModelInvocationLog":
            skipped["not an invocation-log record"] += 1
            continue
        if not matches(rec.get("requestMetadata"), filters):
            skipped["filtered out by requestMetadataFilters"] += 1
            continue
        body = (rec.get("input") or {}).get("inputBodyJson")
        out = (rec.get("output") or {}).get("outputBodyJson")
        if not isinstance(body, dict):
            skipped["no text logged (textDataDeliveryEnabled off)"] += 1
            continue
        try:
            row = _log_prompt(rec.get("operation"), rec.get("modelId") or "", body,
                              out if use_prompt_response else None)
        except (AfinarError, KeyError, TypeError, ValueError, IndexError):
            row = None
        if row is None:
            skipped["not a text-generation call"] += 1
            continue
        rows.append(row | {"invocation": f"{f.name}:{n}"})
    return rows, skipped


def _log_prompt(op: str, model_id: str, body: dict, out: dict | None) -> dict | None:
    if op in ("Converse", "ConverseStream"):
        msgs = list(body["messages"]) + ([out["output"]["message"]] if out else [])
        return {"schemaVersion": "bedrock-conversation-2024", "system": body.get("system") or [],
                "messages": msgs} | ({"toolConfig": body["toolConfig"]}
                                     if body.get("toolConfig") else {})
    if op == "ChatCompletions":
        msgs = list(body["messages"]) + ([out["choices"][0]["message"]] if out else [])
        return {"messages": msgs} | ({"tools": body["tools"]} if body.get("tools") else {})
    if op == "Completions" and isinstance(body.get("prompt"), str):
        answer = out["choices"][0]["text"] if out else None
        return {"prompt": body["prompt"]} | ({"completion": answer} if answer else {})
    if op in ("InvokeModel", "InvokeModelWithResponseStream"):
        from afinar.inference import bodies

        family = bodies.provider(model_id)
        if family == "titan-embed":
            return None
        kw = bodies.request(family, body)
        answer = bodies.answer_text(family, out) if out else None
        if kw.get("messages"):
            msgs = kw["messages"] + ([{"role": "assistant", "content": answer}]
                                     if answer else [])
            return openai_record(msgs, kw.get("tools"))
        return {"prompt": kw["prompt"]} | ({"completion": answer} if answer else {})
    return None

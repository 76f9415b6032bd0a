"""Prompt records: what a teacher answers (distillation, synthesis) and what reinforcement
fine-tuning samples from.

A prompt file holds, one per line (or record), any of:
  chat       {"messages": [... ending with a user or tool turn], "tools": [...]} (OpenAI), or
             Bedrock's conversation records ({"schemaVersion", "system", "messages",
             "toolConfig"}); a trailing assistant turn is the record's own answer;
  instruction {"instruction", "input"?, "system"?, "output"?} (output: the answer, if any);
  prompt     {"prompt", "completion"?}.
Every other field is kept as the record's *item* (the reference data a grader reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afinar.data.readers import ReadResult, read_records
from afinar.errors import Issue

CHAT_FIELDS = ("messages", "tools", "schemaVersion", "system", "toolConfig")
INSTRUCTION_FIELDS = ("instruction", "input", "output", "system")
PROMPT_FIELDS = ("prompt", "completion")
FORMS = ('{"messages": [... ending with a user turn]}, {"instruction", "input"} or '
         '{"prompt"}')


@dataclass
class PromptRecord:
    line: int
    messages: list[dict]  # canonical (data/chat.py), ending with a user or tool turn
    tools: list[dict] | None = None  # canonical tools
    answer: dict | None = None  # the record's own final assistant message, when it has one
    item: dict = field(default_factory=dict)  # the record's other fields


def _text(v) -> str | None:
    from afinar.data.schema import serialize_value

    return None if v is None else serialize_value(v)


def prompt_record(rec: dict, line: int) -> tuple[PromptRecord | None, list[Issue]]:
    """One record as a prompt, or the problems (field paths as the record spells them)."""
    from afinar.data.chat import request_conversation

    if "messages" in rec or "schemaVersion" in rec:
        bedrock = rec.get("schemaVersion") is not None or "system" in rec
        msgs, tools, probs = request_conversation(
            rec.get("messages"), rec.get("toolConfig" if bedrock else "tools"),
            bedrock=bedrock, system=rec.get("system"))
        if probs:
            return None, [Issue(i.message, line, i.field, code=i.code) for i in probs]
        item = {k: v for k, v in rec.items() if k not in CHAT_FIELDS}
    elif "instruction" in rec or "prompt" in rec:
        key = "instruction" if "instruction" in rec else "prompt"
        user = rec[key]
        if not isinstance(user, str) or not user.strip():
            return None, [Issue(f"'{key}' must be a non-empty string", line, key,
                                code="empty" if isinstance(user, str) else "wrong_type")]
        inp = _text(rec.get("input")) if key == "instruction" else None
        if inp and inp.strip():
            user = f"{user}\n\n{inp}"
        msgs = []
        if key == "instruction" and isinstance(rec.get("system"), str) and rec["system"].strip():
            msgs.append({"role": "system", "content": rec["system"]})
        msgs.append({"role": "user", "content": user})
        answer = _text(rec.get("output" if key == "instruction" else "completion"))
        if answer is not None and answer.strip():
            msgs.append({"role": "assistant", "content": answer})
        tools = None
        item = {k: v for k, v in rec.items()
                if k not in (INSTRUCTION_FIELDS if key == "instruction" else PROMPT_FIELDS)}
    else:
        return None, [Issue(f"not a prompt record (keys {sorted(rec)[:6]}): expected {FORMS}",
                            line, code="unknown_schema")]
    if not msgs:
        return None, [Issue("no messages: a prompt is needed", line, "messages",
                            code="missing")]
    answer_msg = None
    if msgs[-1]["role"] == "assistant":
        answer_msg, msgs = msgs[-1], msgs[:-1]
    if not msgs or msgs[-1]["role"] not in ("user", "tool"):
        return None, [Issue("the prompt must end with a user (or tool) message", line,
                            "messages", code="wrong_value")]
    return PromptRecord(line, msgs, tools, answer_msg, item), []


def read_prompts(path: str) -> tuple[ReadResult, list[PromptRecord], list[Issue]]:
    """Every record of a prompt file, with the file's problems (file, line, field)."""
    read = read_records(path)
    issues = list(read.issues)
    out = []
    for r in read.records:
        got, probs = prompt_record(r.data, r.line)
        issues += [Issue(i.message, i.line, i.field, path, i.code, read.unit) for i in probs]
        if got is not None:
            out.append(got)
    return read, out, issues


def openai_record(messages: list[dict], tools: list[dict] | None = None, **extra) -> dict:
    """A canonical conversation as an OpenAI chat-format training record."""
    from afinar.data.tools import openai_calls, openai_tool

    msgs = []
    for m in messages:
        o = {"role": m["role"], "content": m.get("content")}
        if m.get("tool_calls"):
            o["tool_calls"] = openai_calls(m["tool_calls"])
        if m["role"] == "tool":
            o["tool_call_id"] = m["tool_call_id"]
        msgs.append(o)
    rec = {"messages": msgs}
    if tools:
        rec["tools"] = [openai_tool(t) for t in tools]
    return rec | extra

"""Schema detection and normalisation.

Every supported record shape becomes an `Example`: chat `messages` (system/user/assistant) for
supervised data, `text` for unlabelled text, `text` + `label` for classification.

Supported shapes (by the keys present):
- prompt_completion:     {"prompt", "completion"}
- instruction:           {"instruction", "input"?, "output"}; input/output may be JSON values
- messages:              {"messages": [{"role", "content": str}, ...]} (OpenAI style), with
                          optional "tools", assistant "tool_calls", "tool" messages, "weight"
- bedrock_conversation:  {"schemaVersion": "bedrock-conversation-2024", "system": [{"text"}],
                          "messages": [{"role", "content": [{"text"}]}]}, with optional
                          "toolConfig" and toolUse / toolResult blocks
(chat records are normalised and checked by data/chat.py; tools render via data/tools.py)
- text:                  {"text"}            unlabelled text (continued pre-training)
- input_text:            {"input"}           Bedrock's continued pre-training format
- classification:        {"text", "label"}
- preference:            {"input", "preferred_output", "non_preferred_output"} (OpenAI) or
                          {"prompt", "chosen", "rejected"}: data/preference.py
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from afinar.data.chat import BEDROCK_SCHEMA_VERSION, normalize_chat
from afinar.data.preference import is_preference, normalize_preference
from afinar.data.readers import RawRecord, ReadResult
from afinar.errors import Issue

SUPERVISED = {"prompt_completion", "instruction", "messages", "bedrock_conversation"}
UNLABELLED = {"text", "input_text"}
PREFERENCE = {"preference"}
SCHEMAS = sorted(SUPERVISED | UNLABELLED | PREFERENCE | {"classification"})
LABEL_FIELDS = ("label", "labels", "category", "class", "intent")


@dataclass
class Example:
    line: int
    schema: str
    messages: list[dict] | None = None  # canonical chat messages (data/chat.py)
    text: str | None = None
    label: str | None = None
    raw: dict = field(default_factory=dict)
    tools: list[dict] | None = None  # canonical tools, when the conversation has some
    rejected: list[dict] | None = None  # preference: the prompt + the non-preferred answer

    def content_key(self) -> str:
        """Text used for duplicate detection (a preference pair: both of its answers)."""
        if self.messages is not None:
            key = _render(self.messages)
            if self.rejected:
                key += "\n--- rejected\n" + _render(
                    self.rejected[len(self.prompt_messages()):])
            return key
        return self.text or ""

    def prompt_messages(self) -> list[dict[str, str]]:
        """Messages up to (not including) the last assistant turn."""
        assert self.messages is not None
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    def target(self) -> str:
        """The last assistant turn (the reference answer), tool calls in the tool format."""
        from afinar.data.tools import assistant_text

        assert self.messages is not None
        return assistant_text([m for m in self.messages if m["role"] == "assistant"][-1])


def _render(msgs: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content'] or ''}" + (
        serialize_value(m["tool_calls"]) if m.get("tool_calls") else "") for m in msgs)


def serialize_value(v: Any) -> str:
    """Deterministic text for instruction inputs/outputs that are JSON values."""
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


def detect_schema(rec: dict) -> str | None:
    keys = set(rec)
    if is_preference(rec):
        return "preference"
    if rec.get("schemaVersion") == BEDROCK_SCHEMA_VERSION:
        return "bedrock_conversation"
    if "messages" in keys:
        msgs = rec["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) and isinstance(
                msgs[0].get("content"), list):
            return "bedrock_conversation"
        return "messages"
    if "instruction" in keys:
        return "instruction"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys and any(k in keys for k in LABEL_FIELDS):
        return "classification"
    if "text" in keys:
        return "text"
    if "input" in keys and "output" not in keys:
        return "input_text"
    return None


def _str_field(rec: dict, name: str, line: int, issues: list[Issue], *, required: bool = True,
               allow_json: bool = False) -> str | None:
    if name not in rec or rec[name] is None:
        if required:
            issues.append(Issue(f"missing required field '{name}'", line, name, code="missing"))
        return None
    v = rec[name]
    if allow_json and isinstance(v, (dict, list, int, float, bool)):
        return serialize_value(v)
    if not isinstance(v, str):
        issues.append(Issue(f"'{name}' must be a string, got {type(v).__name__}", line, name,
                            code="wrong_type"))
        return None
    if required and not v.strip():
        issues.append(Issue(f"'{name}' is empty", line, name, code="empty"))
        return None
    return v


def normalize_record(r: RawRecord, schema: str, issues: list[Issue]) -> Example | None:
    rec, line = r.data, r.line
    n = len(issues)
    if schema == "prompt_completion":
        p = _str_field(rec, "prompt", line, issues)
        c = _str_field(rec, "completion", line, issues)
        if len(issues) > n:
            return None
        return Example(line, schema, [{"role": "user", "content": p},
                                      {"role": "assistant", "content": c}], raw=rec)
    if schema == "instruction":
        ins = _str_field(rec, "instruction", line, issues)
        inp = _str_field(rec, "input", line, issues, required=False, allow_json=True)
        out = _str_field(rec, "output", line, issues, allow_json=True)
        if len(issues) > n:
            return None
        user = ins if not inp or not inp.strip() else f"{ins}\n\n{inp}"
        msgs = []
        if isinstance(rec.get("system"), str) and rec["system"].strip():
            msgs.append({"role": "system", "content": rec["system"]})
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
        return Example(line, schema, msgs, raw=rec)
    if schema in ("messages", "bedrock_conversation"):
        got = normalize_chat(rec, line, issues, bedrock=schema == "bedrock_conversation")
        return None if got is None else Example(line, schema, got[0], raw=rec, tools=got[1])
    if schema == "preference":
        got = normalize_preference(rec, line, issues)
        return None if got is None else Example(line, schema, got[0], raw=rec, tools=got[2],
                                                rejected=got[1])
    if schema in ("text", "input_text"):
        t = _str_field(rec, "text" if schema == "text" else "input", line, issues)
        return None if t is None else Example(line, schema, text=t, raw=rec)
    if schema == "classification":
        t = _str_field(rec, "text", line, issues)
        lf = next(k for k in LABEL_FIELDS if k in rec)
        lab = rec[lf]
        if lab is None or (isinstance(lab, str) and not lab.strip()) or isinstance(
                lab, (dict, list)):
            issues.append(Issue(f"'{lf}' must be a non-empty string or number", line, lf,
                                code="empty" if not lab else "wrong_type"))
            return None
        return None if t is None else Example(line, schema, text=t, label=str(lab), raw=rec)
    raise ValueError(schema)


@dataclass
class Normalized:
    schema: str | None
    examples: list[Example]
    issues: list[Issue]
    schema_counts: dict[str, int]


def normalize(read: ReadResult, expected: str | set[str] | None = None) -> Normalized:
    """Detect the file's schema (the majority) and normalise every record.

    Records of another schema are reported as 'mixed schemas' with their line numbers."""
    issues = list(read.issues)
    detected = [(r, detect_schema(r.data)) for r in read.records]
    counts = Counter(s for _, s in detected if s)
    schema = counts.most_common(1)[0][0] if counts else None
    examples = []
    for r, s in detected:
        local: list[Issue] = []
        if s is None:
            local.append(Issue(
                f"unrecognised record with keys {sorted(r.data)[:6]}: expected one of "
                f"prompt/completion, instruction/input/output, messages, "
                f"bedrock-conversation-2024, text, input, text/label, "
                f"input/preferred_output/non_preferred_output, prompt/chosen/rejected", r.line, code="unknown_schema"))
        elif s != schema:
            local.append(Issue(f"mixed schemas: this record is '{s}' but the file is '{schema}' "
                               f"({counts[schema]} records)", r.line, code="mixed_schema"))
        else:
            ex = normalize_record(r, s, local)
            if ex is not None:
                examples.append(ex)
        issues.extend(_locate(i, read) for i in local)
    if expected and schema:
        allowed = {expected} if isinstance(expected, str) else set(expected)
        if schema not in allowed:
            issues.insert(0, Issue(f"this file is '{schema}' data, but {sorted(allowed)} is "
                                   f"needed here", None, file=read.path, code="wrong_schema"))
    return Normalized(schema, examples, issues, dict(counts))


def _locate(i: Issue, read: ReadResult) -> Issue:
    return Issue(i.message, i.line, i.field, read.path, i.code, read.unit)

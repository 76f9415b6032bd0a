"""Preference pairs (DPO and its relatives): one prompt, a preferred and a non-preferred answer.

Two record shapes, both normalised to the prompt + preferred conversation (`Example.messages`,
so token counts, duplicates and the chat template work as for supervised data) and the prompt +
non-preferred conversation (`Example.rejected`):

- OpenAI's preference format: {"input": {"messages": [...], "tools"?: [...]},
  "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [...]}
- the common one (TRL, most kits): {"prompt", "chosen", "rejected"}, each a string (the user
  turn / the assistant's answer) or a list of messages.

Every problem is reported with its line and the field as the record spells it
(`preferred_output[0].content`, `input.messages[1].role`, `rejected`).
"""

from __future__ import annotations

import re
from typing import Any

from afinar.data.chat import normalize_chat
from afinar.errors import Issue

OPENAI_KEYS = ("preferred_output", "non_preferred_output")
COMMON_KEYS = ("chosen", "rejected")


def is_preference(rec: dict) -> bool:
    return any(k in rec for k in OPENAI_KEYS + COMMON_KEYS)


def _as_messages(v: Any, role: str) -> Any:
    """A string is one message of this role; a list is kept (checked as messages)."""
    return [{"role": role, "content": v}] if isinstance(v, str) else v


def _side(prompt: list, answer: Any, field: str, tools: Any, line: int, issues: list[Issue],
          rename) -> tuple[list[dict], list[dict] | None] | None:
    """The prompt + one answer (the record's `field`) as a canonical conversation and tools;
    issues under the record's names."""
    local: list[Issue] = []
    if not isinstance(answer, list) or not answer:
        issues.append(Issue("must be a non-empty list of assistant messages or a string",
                            line, field, code="wrong_type"))
        return None
    if any(not isinstance(m, dict) or m.get("role") != "assistant" for m in answer):
        local.append(Issue("the answer's messages must have role 'assistant'", line,
                           f"messages[{len(prompt)}]", code="wrong_value"))
    else:
        rec = {"messages": list(prompt) + list(answer)}
        if tools is not None:
            rec["tools"] = tools
        got = normalize_chat(rec, line, local, bedrock=False)
        if got is not None and not local:
            return got
    issues.extend(Issue(i.message, i.line, rename(i.field) if i.field else i.field,
                        code=i.code) for i in local)
    return None


def normalize_preference(rec: dict, line: int, issues: list[Issue]):
    """(preferred messages, non-preferred messages, tools) or None after adding issues."""
    n = len(issues)
    openai = any(k in rec for k in OPENAI_KEYS)
    keys = OPENAI_KEYS if openai else COMMON_KEYS
    for k in keys:
        if rec.get(k) is None:
            issues.append(Issue(f"missing required field '{k}'", line, k, code="missing"))
    if openai:
        inp = rec.get("input")
        if not isinstance(inp, dict):
            issues.append(Issue("'input' must be an object with 'messages' (and optional "
                                "'tools')", line, "input",
                                code="missing" if inp is None else "wrong_type"))
            return None
        prompt, tools, pname = inp.get("messages"), inp.get("tools"), "input.messages"
    else:
        raw = rec.get("prompt")
        if raw is None:
            issues.append(Issue("missing required field 'prompt'", line, "prompt",
                                code="missing"))
            return None
        prompt, tools, pname = _as_messages(raw, "user"), rec.get("tools"), "prompt"
    if not isinstance(prompt, list) or not prompt:
        issues.append(Issue("must be a non-empty list of messages" + (
            "" if openai else " or a string"), line, pname, code="wrong_type"))
        return None
    if len(issues) > n:
        return None
    k = len(prompt)
    prompt_listed = openai or isinstance(rec.get("prompt"), list)

    def renamer(answer_field: str):
        """A field of the joined conversation (messages[i]...) as the record spells it."""
        answer_listed = not isinstance(rec.get(answer_field), str)

        def rename(f: str) -> str:
            m = re.match(r"messages\[(\d+)\](.*)", f)
            if m:
                i, rest = int(m.group(1)), m.group(2)
                if i < k:
                    return f"{pname}[{i}]{rest}" if prompt_listed else pname
                return f"{answer_field}[{i - k}]{rest}" if answer_listed else answer_field
            if f == "tools" or f.startswith("tools["):
                return ("input." if openai else "") + f
            return answer_field if f == "messages" else f
        return rename

    good = _side(prompt, _as_messages(rec[keys[0]], "assistant"), keys[0], tools, line, issues,
                 renamer(keys[0]))
    bad = _side(prompt, _as_messages(rec[keys[1]], "assistant"), keys[1], tools, line, issues,
                renamer(keys[1]))
    if good is None or bad is None:
        seen, mine = set(), issues[n:]  # a prompt's problem is reported once, not per side
        del issues[n:]
        for i in mine:
            if (i.field, i.message) not in seen:
                seen.add((i.field, i.message))
                issues.append(i)
        return None
    if good[0][k:] == bad[0][k:]:
        issues.append(Issue("the non-preferred answer is the same as the preferred one: the "
                            "pair teaches nothing", line, keys[1], code="identical_pair"))
        return None
    return good[0], bad[0], good[1]

"""Chat records — OpenAI `messages` (with optional `tools`) and Bedrock conversations (with
optional `toolConfig`) — normalised to one canonical conversation and checked, each problem
with its line and field.

Canonical shape (what training, evaluation and serving all take):
- tools:    [{"name", "description", "parameters": JSON schema}]
- messages: {"role": "system" | "user" | "assistant" | "tool", "content": str | None}
            assistant: optional "tool_calls": [{"id", "name", "arguments": dict}] and "weight"
            (0 = no loss on this turn, 1 = loss; OpenAI's per-message weight)
            tool:      "tool_call_id" of the call it answers
A conversation with no tools is a list of {"role", "content": str}, as before.
"""

from __future__ import annotations

import json
from typing import Any

from afinar import jsonutil
from afinar.errors import Issue

BEDROCK_SCHEMA_VERSION = "bedrock-conversation-2024"


class _Where:
    """Collects issues for one record."""

    def __init__(self, line: int, issues: list[Issue]):
        self.line, self.issues, self.start = line, issues, len(issues)

    def __call__(self, message: str, field: str | None, code: str) -> None:
        self.issues.append(Issue(message, self.line, field, code=code))

    @property
    def failed(self) -> bool:
        return len(self.issues) > self.start


# -- tools --------------------------------------------------------------------------------------
def _check_tool(name: Any, params: Any, f: str, pf: str, where: _Where, seen: set
                ) -> dict | None:
    """f: the field that holds the tool's name; pf: the field of its parameter schema."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(name, str) or not name.strip():
        where("a tool needs a non-empty 'name'", f + ".name", "missing")
        return None
    if name in seen:
        where(f"tool '{name}' is defined twice", f + ".name", "duplicate_tool")
        return None
    seen.add(name)
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        where("the tool's parameters must be a JSON schema object", pf, "wrong_type")
        return None
    try:
        validator_for(params).check_schema(params)
    except SchemaError as e:
        where(f"the tool's parameters are not a valid JSON schema: {e.message}", pf,
              "invalid_schema")
        return None
    return {"name": name, "parameters": params}


def openai_tools(tools: Any, where: _Where, field: str = "tools") -> list[dict] | None:
    """OpenAI `tools` ([{"type": "function", "function": {...}}]) -> canonical tools."""
    if not isinstance(tools, list):
        where("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}", field,
              "wrong_type")
        return None
    out, seen = [], set()
    for i, t in enumerate(tools):
        f = f"{field}[{i}]"
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(
                t.get("function"), dict):
            where("each tool must be {\"type\": \"function\", \"function\": {\"name\", "
                  "\"description\", \"parameters\"}}", f, "wrong_type")
            continue
        fn = t["function"]
        tool = _check_tool(fn.get("name"), fn.get("parameters"), f + ".function",
                           f + ".function.parameters", where, seen)
        if tool:
            out.append(tool | {"description": str(fn.get("description") or "")})
    return out


def bedrock_tools(config: Any, where: _Where, field: str = "toolConfig") -> list[dict] | None:
    """Bedrock `toolConfig` ({"tools": [{"toolSpec": {...}}]}) -> canonical tools."""
    if not isinstance(config, dict) or not isinstance(config.get("tools"), list):
        where("'toolConfig' must be {\"tools\": [{\"toolSpec\": {...}}]}", field, "wrong_type")
        return None
    out, seen = [], set()
    for i, t in enumerate(config["tools"]):
        f = f"{field}.tools[{i}]"
        spec = t.get("toolSpec") if isinstance(t, dict) else None
        if not isinstance(spec, dict):
            where("each tool must be {\"toolSpec\": {\"name\", \"description\", \"inputSchema\": "
                  "{\"json\": ...}}}", f, "wrong_type")
            continue
        schema = (spec.get("inputSchema") or {}).get("json") if isinstance(
            spec.get("inputSchema"), dict) else spec.get("inputSchema")
        tool = _check_tool(spec.get("name"), schema, f + ".toolSpec",
                           f + ".toolSpec.inputSchema.json", where, seen)
        if tool:
            out.append(tool | {"description": str(spec.get("description") or "")})
    return out


def bedrock_tool_choice(config: Any) -> str | dict:
    """Bedrock's toolChoice ({"auto"} | {"any"} | {"tool": {"name"}}) as a GenRequest's
    tool_choice ("auto" | "required" | {"name"})."""
    choice = (config.get("toolChoice") or {}) if isinstance(config, dict) else {}
    if "any" in choice:
        return "required"
    if "tool" in choice:
        return {"name": (choice["tool"] or {}).get("name")}
    return "auto"


def check_arguments(args: Any, tool: dict) -> str | None:
    """Why `args` do not satisfy the tool's parameter schema, or None."""
    from jsonschema.validators import validator_for

    if not isinstance(args, dict):
        return f"arguments must be a JSON object, got {type(args).__name__}"
    schema = tool["parameters"]
    err = next(iter(validator_for(schema)(schema).iter_errors(args)), None)
    if err is None:
        return None
    at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    return f"arguments{at} do not satisfy the schema of '{tool['name']}': {err.message}"


# -- messages -----------------------------------------------------------------------------------
def _text(content: Any) -> str | None:
    """OpenAI content: a string, or a list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    return None


def _message_list(msgs: Any, where: _Where) -> bool:
    if isinstance(msgs, list) and msgs:
        return True
    where("'messages' must be a non-empty list", "messages",
          "wrong_type" if msgs is not None else "missing")
    return False


def openai_messages(msgs: Any, where: _Where) -> list[dict] | None:
    if not _message_list(msgs, where):
        return None
    out = []
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            where("must be an object with 'role' and 'content'", f, "wrong_type")
            continue
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            where(f"role must be one of ['assistant', 'system', 'tool', 'user'], got {role!r}",
                  f + ".role", "wrong_value")
            continue
        role = "system" if role == "developer" else role
        content = m.get("content")
        text = None if content is None else _text(content)
        if content is not None and text is None:
            where(f"content must be a string or a list of text parts, got "
                  f"{type(content).__name__}", f + ".content", "wrong_type")
            continue
        msg: dict = {"role": role, "content": text}
        if role == "assistant":
            calls = m.get("tool_calls")
            if calls is not None:
                msg["tool_calls"] = _openai_calls(calls, f + ".tool_calls", where)
            if "weight" in m:
                if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                    where(f"weight must be 0 or 1, got {m['weight']!r}", f + ".weight",
                          "wrong_value")
                else:
                    msg["weight"] = int(m["weight"])
            if not (text or "").strip() and not msg.get("tool_calls"):
                where("an assistant message needs content or tool_calls", f + ".content",
                      "empty")
                continue
        elif role == "tool":
            if not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]:
                where("a tool message needs the 'tool_call_id' of the call it answers",
                      f + ".tool_call_id", "missing")
                continue
            msg["tool_call_id"] = m["tool_call_id"]
            msg["content"] = text or ""
        elif not (text or "").strip():
            where("content is empty", f + ".content", "empty" if content is not None
                  else "missing")
            continue
        out.append(msg)
    return None if where.failed else out


def _openai_calls(calls: Any, f: str, where: _Where) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        where("tool_calls must be a non-empty list", f, "wrong_type")
        return []
    out = []
    for j, c in enumerate(calls):
        g = f"{f}[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or c.get("type", "function") != "function":
            where("each tool call must be {\"id\", \"type\": \"function\", \"function\": "
                  "{\"name\", \"arguments\"}}", g, "wrong_type")
            continue
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = jsonutil.loads(args)
            except ValueError as e:
                where(f"arguments are not valid JSON: {e}", g + ".function.arguments",
                      "invalid_arguments")
                continue
        out.append({"id": c.get("id") if isinstance(c.get("id"), str) else None,
                    "name": fn.get("name"), "arguments": args, "field": g + ".function"})
    return out


def bedrock_messages(rec: dict, where: _Where) -> list[dict] | None:
    out: list[dict] = []
    system = rec.get("system", [])
    if not isinstance(system, list) or not all(
            isinstance(s, dict) and isinstance(s.get("text"), str) for s in system):
        where("'system' must be a list of {\"text\": ...} objects", "system", "wrong_type")
    elif system:
        out.append({"role": "system", "content": "\n".join(s["text"] for s in system)})
    msgs = rec.get("messages")
    if not _message_list(msgs, where):
        return None
    turns = []
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            where(f"role must be one of ['assistant', 'user'], got {role!r}", f + ".role",
                  "wrong_value")
            continue
        content = m.get("content")
        if not isinstance(content, list) or not content:
            where("content must be a non-empty list of content blocks ({\"text\"}, "
                  "{\"toolUse\"}, {\"toolResult\"})", f + ".content", "wrong_type")
            continue
        turns.append(role)
        texts, calls, results = [], [], []
        for j, b in enumerate(content):
            g = f"{f}.content[{j}]"
            if isinstance(b, dict) and isinstance(b.get("text"), str):
                texts.append(b["text"])
            elif isinstance(b, dict) and "toolUse" in b and role == "assistant":
                u = b["toolUse"]
                if not isinstance(u, dict) or not isinstance(u.get("toolUseId"), str):
                    where("toolUse needs 'toolUseId', 'name' and 'input'", g + ".toolUse",
                          "wrong_type")
                    continue
                calls.append({"id": u["toolUseId"], "name": u.get("name"),
                              "arguments": u.get("input"), "field": g + ".toolUse"})
            elif isinstance(b, dict) and "toolResult" in b and role == "user":
                r = b["toolResult"]
                if not isinstance(r, dict) or not isinstance(r.get("toolUseId"), str):
                    where("toolResult needs 'toolUseId' and 'content'", g + ".toolResult",
                          "wrong_type")
                    continue
                results.append({"role": "tool", "tool_call_id": r["toolUseId"],
                                "content": tool_result_text(r.get("content")),
                                "field": g + ".toolResult.toolUseId"})
            else:
                kind = next(iter(b), "?") if isinstance(b, dict) and b else "?"
                where(f"unsupported content block '{kind}' in a {role} message (text, toolUse "
                      f"in assistant turns, toolResult in user turns)", g, "wrong_type")
        text = "".join(texts)
        if role == "assistant":
            if not text.strip() and not calls:
                where("an assistant message needs text or toolUse", f + ".content", "empty")
                continue
            msg = {"role": "assistant", "content": text or None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        else:
            out.extend(results)
            if text.strip():
                out.append({"role": "user", "content": text})
            elif not results:
                where("content is empty", f + ".content", "empty")
    if turns and not where.failed and (any(a == b for a, b in zip(turns, turns[1:], strict=False))
                                       or turns[0] != "user"):
        where("messages must alternate user/assistant, starting with user", "messages",
              "wrong_order")
    return None if where.failed else out


def tool_result_text(content: Any) -> str:
    """Bedrock toolResult content ([{"text"} | {"json"}]) as one string."""
    if isinstance(content, str):
        return content
    parts = []
    for c in content or []:
        if isinstance(c, dict) and "text" in c:
            parts.append(str(c["text"]))
        elif isinstance(c, dict) and "json" in c:
            parts.append(json.dumps(c["json"], ensure_ascii=False))
    return "\n".join(parts)


def converse_conversation(messages: list[dict], tools: list[dict] | None = None) -> dict:
    """A canonical conversation as Bedrock Converse's `system`, `messages` and `toolConfig`
    (the reverse of bedrock_messages / bedrock_tools): tool results join the next user turn,
    as Converse wants user/assistant turns alternating."""
    system = [{"text": m["content"]} for m in messages if m["role"] == "system"]
    turns: list[dict] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] == "assistant":
            blocks = ([{"text": m["content"]}] if m.get("content") else []) + [
                {"toolUse": {"toolUseId": c["id"], "name": c["name"], "input": c["arguments"]}}
                for c in m.get("tool_calls") or []]
            role = "assistant"
        elif m["role"] == "tool":
            blocks = [{"toolResult": {"toolUseId": m["tool_call_id"],
                                      "content": [{"text": m.get("content") or ""}]}}]
            role = "user"
        else:
            blocks, role = [{"text": m.get("content") or ""}], "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    out = {"messages": turns} | ({"system": system} if system else {})
    if tools:
        out["toolConfig"] = {"tools": [{"toolSpec": {
            "name": t["name"], "description": t.get("description") or t["name"],
            "inputSchema": {"json": t["parameters"]}}} for t in tools]}
    return out


# -- the whole conversation ---------------------------------------------------------------------
def check_tool_use(messages: list[dict], tools: list[dict] | None, where: _Where) -> None:
    """Calls name defined tools with arguments that satisfy their schemas; ids are unique; every
    tool result answers an earlier call. Removes the bookkeeping 'field' keys."""
    by_name = {t["name"]: t for t in tools or []}
    open_calls: set[str] = set()
    seen_ids: set[str] = set()
    for i, m in enumerate(messages):
        for k, c in enumerate(m.get("tool_calls") or []):
            f = c.pop("field", f"messages[{i}].tool_calls[{k}]")
            if c["id"] is None:
                c["id"] = f"call_{i}_{k}"
            if c["id"] in seen_ids:
                where(f"tool call id '{c['id']}' is used twice", f, "duplicate_id")
            seen_ids.add(c["id"])
            open_calls.add(c["id"])
            tool = by_name.get(c["name"])
            if tool is None:
                defined = sorted(by_name) or "none: add 'tools'"
                where(f"call to undefined tool {c['name']!r} (defined: {defined})",
                      f + ".name", "undefined_tool")
                continue
            why = check_arguments(c["arguments"], tool)
            if why:
                where(why, f + (".input" if f.endswith("toolUse") else ".arguments"),
                      "invalid_arguments")
        if m["role"] == "tool":
            f = m.pop("field", f"messages[{i}].tool_call_id")
            if m["tool_call_id"] not in open_calls:
                where(f"tool result for '{m['tool_call_id']}', which no earlier assistant "
                      f"tool call has", f, "unmatched_tool_result")
            open_calls.discard(m["tool_call_id"])


def normalize_chat(rec: dict, line: int, issues: list[Issue], bedrock: bool
                   ) -> tuple[list[dict], list[dict] | None] | None:
    """(messages, tools) in the canonical shape, or None after adding issues."""
    where = _Where(line, issues)
    tools = None
    if bedrock:
        if rec.get("schemaVersion") not in (None, BEDROCK_SCHEMA_VERSION):
            where(f"schemaVersion must be '{BEDROCK_SCHEMA_VERSION}'", "schemaVersion",
                  "wrong_value")
        if rec.get("toolConfig") is not None:
            tools = bedrock_tools(rec["toolConfig"], where)
        msgs = bedrock_messages(rec, where)
    else:
        if "functions" in rec or "function_call" in rec:
            where("the legacy 'functions' format is not supported: use 'tools' and "
                  "'tool_calls'", "functions", "unsupported")
        if rec.get("tools") is not None:
            tools = openai_tools(rec["tools"], where)
        msgs = openai_messages(rec.get("messages"), where)
    if msgs is None or where.failed:
        return None
    check_tool_use(msgs, tools, where)
    if where.failed:
        return None
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in msgs):
        where("no assistant message with weight 1: nothing to learn from", "messages",
              "no_target")
        return None
    return msgs, tools


def request_conversation(messages: Any, tools: Any, bedrock: bool = False,
                         system: Any = None) -> tuple[list[dict], list[dict] | None, list[Issue]]:
    """An inference request's conversation (OpenAI `messages` + `tools`, or Bedrock Converse
    `messages` + `system` + `toolConfig`) in the canonical shape, with the problems found
    (field paths as the request spells them). History is not held to the tool schemas."""
    issues: list[Issue] = []
    where = _Where(0, issues)
    canon_tools = None
    if bedrock:
        if tools is not None:
            canon_tools = bedrock_tools(tools, where)
        rec = {"messages": messages} | ({"system": system} if system is not None else {})
        msgs = bedrock_messages(rec, where) or []
    else:
        if tools is not None:
            canon_tools = openai_tools(tools, where)
        msgs = openai_messages(messages, where) or []
    known: set[str] = set()
    for i, m in enumerate(msgs):
        for k, c in enumerate(m.get("tool_calls") or []):
            f = c.pop("field", "")
            if c["id"] is None:
                c["id"] = f"call_{i}_{k}"
            known.add(c["id"])
            if not isinstance(c["name"], str) or not isinstance(c["arguments"], dict):
                where("a tool call needs a function name and an arguments object", f,
                      "wrong_type")
        if m["role"] == "tool":
            f = m.pop("field", f"messages[{i}].tool_call_id")
            if m["tool_call_id"] not in known:
                where(f"tool result for '{m['tool_call_id']}', which no earlier assistant tool "
                      f"call has", f, "unmatched_tool_result")
    return msgs, canon_tools, issues

"""The tool-call text format: how a canonical conversation (data/chat.py) with tools becomes the
messages a chat template renders, and how generated text becomes tool calls again. Training
and serving both go through here, so what a model was trained to emit is what the server parses.

Where the model's own chat template renders `tools` and writes calls as `<tool_call>` JSON
(Qwen2.5, Hermes and their descendants), that template is used. Otherwise (SmolLM2 and any
template without tool support) afinar's format, the same Hermes-style layout:

    system turn:  <system text, if any>

                  # Tools
                  You may call functions. Their signatures, one JSON object per line:
                  <tools>
                  {"name": ..., "description": ..., "parameters": {...}}
                  </tools>
                  To call one, answer with:
                  <tool_call>
                  {"name": <function name>, "arguments": <arguments object>}
                  </tool_call>
    assistant:    optional text, then one <tool_call> block per call (parallel calls follow
                  each other, one per line)
    tool results: one user turn holding a <tool_response> block per result, in call order
"""

from __future__ import annotations

import json
import re

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_HEADER = ("# Tools\nYou may call functions. Their signatures, one JSON object per line:\n"
                "<tools>\n{tools}\n</tools>\nTo call one, answer with:\n<tool_call>\n"
                '{{"name": <function name>, "arguments": <arguments object>}}\n</tool_call>')
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|$)",
                      re.S)


def dumps(obj) -> str:
    """The one JSON spelling used in prompts, training targets and grammars."""
    return json.dumps(obj, ensure_ascii=False)


def render_call(call: dict) -> str:
    return f"{CALL_OPEN}\n{dumps({'name': call['name'], 'arguments': call['arguments']})}\n" \
           f"{CALL_CLOSE}"


def assistant_text(m: dict) -> str:
    parts = [m["content"]] if (m.get("content") or "").strip() else []
    parts += [render_call(c) for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def native_tools(tokenizer) -> bool:
    """Whether the tokenizer's own chat template renders tools and writes calls in the
    <tool_call> JSON format this module parses (probed once, cached on the tokenizer)."""
    cached = getattr(tokenizer, "_afinar_native_tools", None)
    if cached is not None:
        return cached
    ok = False
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, str) and "tools" in tpl and "tool_call" in tpl:
        probe = [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"type": "function", "function": {"name": "probe_fn",
                                                       "arguments": {"q": 1}}}]}]
        try:
            out = tokenizer.apply_chat_template(probe, tools=[openai_tool(
                {"name": "probe_fn", "description": "", "parameters": {"type": "object"}})],
                tokenize=False)
            calls = parse_tool_calls(out)[1]
            ok = any(c["name"] == "probe_fn" and c["arguments"] == {"q": 1} for c in calls)
        except Exception:  # a template that raises on tools has no tool support
            ok = False
    try:
        tokenizer._afinar_native_tools = ok
    except AttributeError:
        pass
    return ok


def _signature(t: dict) -> dict:
    sig = {"name": t["name"]}
    if t.get("description"):
        sig["description"] = t["description"]
    return sig | {"parameters": t["parameters"]}


def openai_tool(t: dict) -> dict:
    return {"type": "function", "function": {"name": t["name"], "description": t.get(
        "description", ""), "parameters": t["parameters"]}}


def openai_calls(calls: list[dict]) -> list[dict]:
    """Canonical tool calls in OpenAI's shape (arguments as a JSON string)."""
    return [{"id": c["id"], "type": "function", "function": {
        "name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
        for c in calls]


def template_messages(tokenizer, messages: list[dict], tools: list[dict] | None = None
                      ) -> tuple[list[dict], dict, list[int | None]]:
    """Canonical messages -> (messages for `apply_chat_template`, its extra kwargs, the loss
    weight of each returned message: 1/0 for assistant turns, None for others)."""
    has_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool"
                                   for m in messages)
    weights = []
    if not has_tools:
        out = [{"role": m["role"], "content": m["content"]} for m in messages]
        weights = [m.get("weight", 1) if m["role"] == "assistant" else None for m in messages]
        return out, {}, weights
    if native_tools(tokenizer):
        out = []
        for m in messages:
            d = {"role": m["role"], "content": m.get("content") or ""}
            if m.get("tool_calls"):
                d["tool_calls"] = [{"id": c.get("id"), "type": "function", "function": {
                    "name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]]
            if m["role"] == "tool":
                d["tool_call_id"] = m.get("tool_call_id")
            out.append(d)
            weights.append(m.get("weight", 1) if m["role"] == "assistant" else None)
        return out, ({"tools": [openai_tool(t) for t in tools]} if tools else {}), weights
    out = []
    rest = messages
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    if system is not None:
        rest = messages[1:]
    if tools:
        block = TOOLS_HEADER.format(tools="\n".join(dumps(_signature(t)) for t in tools))
        system = f"{system}\n\n{block}" if (system or "").strip() else block
    if system is not None:
        out.append({"role": "system", "content": system})
        weights.append(None)
    for m in rest:
        if m["role"] == "tool":
            piece = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + piece
            else:
                out.append({"role": "user", "content": piece, "_tool_results": True})
                weights.append(None)
            continue
        content = assistant_text(m) if m["role"] == "assistant" else m["content"]
        out.append({"role": m["role"], "content": content})
        weights.append(m.get("weight", 1) if m["role"] == "assistant" else None)
    for d in out:
        d.pop("_tool_results", None)
    return out, {}, weights


def render(tokenizer, messages: list[dict], tools: list[dict] | None = None,
           generation_prompt: bool = True) -> str:
    """The prompt text for a conversation (canonical messages), as training renders it."""
    msgs, kw, _ = template_messages(tokenizer, messages, tools)
    return tokenizer.apply_chat_template(msgs, tokenize=False,
                                         add_generation_prompt=generation_prompt, **kw)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Generated text -> (the text outside tool calls or None, [{"name", "arguments"}]).
    A block that does not parse as a call stays in the text."""
    calls, kept, pos = [], [], 0
    for m in _CALL_RE.finditer(text):
        call = _parse_call(m.group(1))
        if call is None:
            continue
        kept.append(text[pos:m.start()])
        pos = m.end()
        calls.append(call)
    kept.append(text[pos:])
    rest = "".join(kept).strip()
    return (rest or None), calls


def _parse_call(body: str) -> dict | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return {"name": obj["name"], "arguments": args if isinstance(args, dict) else {}}


class CallStream:
    """Splits streamed text into text pieces and whole tool calls, as they complete. Text that
    could be the start of a `<tool_call>` tag is held back until it is decided."""

    def __init__(self):
        self.buf = ""
        self.in_call = False

    def feed(self, piece: str) -> list[tuple[str, object]]:
        self.buf += piece
        out: list[tuple[str, object]] = []
        while self.buf:
            if self.in_call:
                end = self.buf.find(CALL_CLOSE)
                if end < 0:
                    break
                call = _parse_call(self.buf[:end].strip())
                out.append(("call", call) if call else
                           ("text", CALL_OPEN + self.buf[:end + len(CALL_CLOSE)]))
                self.buf = self.buf[end + len(CALL_CLOSE):].lstrip("\n")
                self.in_call = False
                continue
            start = self.buf.find(CALL_OPEN)
            if start >= 0:
                if self.buf[:start].strip():
                    out.append(("text", self.buf[:start]))
                self.buf = self.buf[start + len(CALL_OPEN):]
                self.in_call = True
                continue
            keep = _partial_tag(self.buf)
            if len(self.buf) > keep:
                out.append(("text", self.buf[:len(self.buf) - keep]))
                self.buf = self.buf[len(self.buf) - keep:]
            break
        return out

    def finish(self) -> list[tuple[str, object]]:
        """What is left when generation ends: an unclosed call is parsed if it is complete
        JSON, else returned as text."""
        if not self.buf:
            return []
        if self.in_call:
            call = _parse_call(self.buf.strip())
            out = [("call", call)] if call else [("text", CALL_OPEN + self.buf)]
        else:
            out = [("text", self.buf)] if self.buf.strip() else []
        self.buf = ""
        return out


def _partial_tag(s: str) -> int:
    """Length of the longest suffix of s that is a proper prefix of CALL_OPEN."""
    for n in range(min(len(s), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(s[-n:]):
            return n
    return 0

"""Constrained decoding: grammars for forced tool calls and structured output, enforced per row
inside batched generation with llguidance.

Why llguidance: it compiles a grammar lazily (no per-schema precompile step, so a new schema
costs microseconds at request time), takes JSON schema and Lark in one grammar (a tool call is
`<tool_call>` + a JSON-schema value + `</tool_call>`), and depends on neither torch nor triton.
benchmarks/constrained.py measures its per-token cost against unconstrained decoding (and
against xgrammar when that is installed).

Grammars (strings llguidance takes):
- a forced tool call (`tool_choice` "required" or a named function): the tool-call format of
  data/tools.py, the call object `{"name": <one of the tools>, "arguments": <its schema>}`,
  one call or, with parallel calls, several separated by a newline;
- `response_format` json_object / json_schema: a JSON value of that schema.
JSON is compact (`", "` and `": "` separators, as data/tools.dumps writes it for training).
An object schema that lists `properties` and says nothing of `additionalProperties` is generated
with its listed properties only (as OpenAI's strict mode requires them to be declared): a
model is never steered into inventing argument names.
"""

from __future__ import annotations

import json

from afinar.data.tools import CALL_CLOSE, CALL_OPEN
from afinar.inference.requests import RequestError

_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _compact(schema: dict) -> dict:
    return _declared_only(schema) | {"x-guidance": _JSON_STYLE}


def _declared_only(s):
    """A copy of a JSON schema where objects with `properties` and no `additionalProperties`
    allow no others."""
    if isinstance(s, list):
        return [_declared_only(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k in ("properties", "patternProperties", "$defs", "definitions") and \
                isinstance(v, dict):  # name -> schema: any name, "examples" included
            out[k] = {name: _declared_only(sub) for name, sub in v.items()}
        else:
            out[k] = v if k in ("const", "enum", "default", "examples") else _declared_only(v)
    if isinstance(s.get("properties"), dict) and "additionalProperties" not in s:
        out["additionalProperties"] = False
    return out


def tool_call_grammar(tools: list[dict], name: str | None = None, parallel: bool = True,
                      started: bool = False) -> str:
    """A Lark grammar for one (or, with `parallel`, one or more) calls of `tools` (only the
    one named `name`, when given). `started`: the grammar of what follows a `<tool_call>` the
    model has already written (tool_choice auto: the model decides to call, the grammar then
    holds the call to the tools' schemas)."""
    chosen = [t for t in tools if name is None or t["name"] == name]
    if not chosen:
        raise RequestError(f"tool_choice names function '{name}', which is not in tools "
                           f"({sorted(t['name'] for t in tools)})")
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                "arguments": t["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False}
             for t in chosen]
    schema = _compact(calls[0] if len(calls) == 1 else {"anyOf": calls})
    more = ' ("\\n" call)*' if parallel else ""
    return (f"start: {'body' if started else 'call'}{more}\n"
            f"call: {json.dumps(CALL_OPEN)} body\n"
            f"body: {json.dumps(chr(10))} %json{json.dumps(schema)} "
            f"{json.dumps(chr(10) + CALL_CLOSE)}\n")


def json_grammar(schema: dict | None) -> str:
    """A grammar for a JSON value of `schema` (any JSON object when None)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(
        _compact(schema if schema is not None else {"type": "object"}))


class Grammars:
    """llguidance's view of one tokenizer (built once per base model, ~0.7 s) and the matchers
    made from it."""

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size

    def matcher(self, grammar: str, what: str):
        import llguidance

        if grammar.lstrip().startswith("{"):
            text = grammar  # a JSON grammar object (from json_grammar)
        else:
            text = llguidance.LLMatcher.grammar_from_lark(grammar)
        m = llguidance.LLMatcher(self.tokenizer, text)
        if m.is_error():
            raise RequestError(f"{what}: cannot be enforced: {m.get_error()}")
        return m

    @staticmethod
    def fill(rows: list[tuple[object, int]], bitmask) -> None:
        """The allowed next tokens of each (matcher, row) into `bitmask`. One row after the
        other: a mask costs ~0.03 ms (benchmarks/constrained.py), against ~30 ms for a decoding
        step, so llguidance's thread pool would buy nothing."""
        import llguidance.torch as lt

        for matcher, row in rows:
            lt.fill_next_token_bitmask(matcher, bitmask, row)

    def bitmask(self, rows: int):
        import llguidance.torch as lt

        return lt.allocate_token_bitmask(rows, self.vocab_size)

    @staticmethod
    def apply(scores, bitmask) -> None:
        """Disallowed tokens' scores to -inf. Our own unpacking of the bits: measured 0.45 ms
        for 8 rows x 49k tokens against 4-40 ms for llguidance.torch's CPU path."""
        import torch

        shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
        allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)
        scores.masked_fill_(allowed[:, :scores.shape[-1]].to(scores.device) == 0,
                            float("-inf"))

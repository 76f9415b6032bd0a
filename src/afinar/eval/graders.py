"""Graders: a score in [0, 1] for a model's answer (the *sample*) given a record's reference data
(the *item*). Reinforcement fine-tuning rewards with them; evaluations can score with them.

A grader is a JSON object, OpenAI's grader objects where one exists (so a `method.
reinforcement.grader` of OpenAI's fine-tuning API works unchanged), plus afinar's JSON graders:

| type | fields | score |
|---|---|---|
| string_check | input, reference, operation eq/ne/like/ilike | 1 or 0 |
| text_similarity | input, reference, evaluation_metric fuzzy_match/bleu/rouge_1..5/rouge_l | 0..1 |
| json_match | input?, reference? | 1 when both parse as the same JSON value |
| json_fields | input?, reference?, metric? f1/recall | F1 of the answer's JSON leaf fields (path and value) against the reference's; recall: the share of the reference's reproduced |
| json_schema | schema, input? | 1 when the answer parses and validates |
| regex | pattern, input? | 1 when the pattern is found |
| python | source (or file): `def grade(sample, item) -> float` | what grade returns |
| endpoint | url: POST {"sample", "item"} -> {"score"} or a number | that score |
| score_model | model, input (messages), range? | the judge's number, scaled to 0..1 |
| multi | graders {name: grader}, calculate_output (arithmetic of the names) | the formula |

Templates in `input` / `reference` / messages: `{{sample.output_text}}`, `{{sample.output_json.a.b}}`,
`{{item.<field>}}` (dotted paths). Defaults: input `{{sample.output_text}}`, reference
`{{item.reference_answer}}`. Shorthands: "exact", "json", "fields", "json_valid".

Code graders (python, endpoint) run the user's code or reach the user's service; the CLI takes
them from the user's own files, the server only from its settings (`[graders]`, by name).
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afinar.errors import ConfigError
from afinar.eval.metrics import exact_match, field_accuracy, field_f1, parse_json, rouge_l

SHORTHANDS = {
    "exact": {"type": "string_check", "operation": "eq"},
    "json": {"type": "json_match"},
    "fields": {"type": "json_fields"},
    "json_valid": {"type": "json_schema", "schema": {}},
}
TYPES = ("string_check", "text_similarity", "json_match", "json_fields", "json_schema",
         "regex", "python", "endpoint", "score_model", "multi")
SIMILARITY = ("fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
              "rouge_l")
DEFAULT_INPUT = "{{sample.output_text}}"
DEFAULT_REFERENCE = "{{item.reference_answer}}"
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


class GraderError(ConfigError):
    """A grader that cannot be built, or that failed on a record."""


_MISSING = object()


def _lookup(path: str, sample: dict, item: dict) -> Any:
    root, *rest = path.split(".")
    v: Any = {"sample": sample, "item": item}.get(root, _MISSING)
    for k in rest:
        v = v.get(k, _MISSING) if isinstance(v, dict) else _MISSING
    if v is _MISSING:
        raise KeyError(path)
    return v


def render(template: str, sample: dict, item: dict) -> str:
    """The template with each {{path}} replaced (JSON values as JSON text); what the answer
    lacks (sample.output_json.x of an answer without x) is empty; what the item lacks is an
    error (Grader.check finds it before any compute)."""
    def sub(m: re.Match) -> str:
        try:
            v = _lookup(m.group(1), sample, item)
        except KeyError:
            if m.group(1).startswith("sample."):
                return ""
            raise GraderError(f"the record has no {m.group(1)}") from None
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
    return _TEMPLATE.sub(sub, template)


def make_sample(text: str) -> dict:
    ok, val = parse_json(text)
    return {"output_text": text, "output_json": val if ok else None}


class Grader:
    """grade(sample text, item) -> score in [0, 1]; check(item) raises when an item lacks what
    the grader's templates read (called on every record before any compute)."""

    def __init__(self, spec: dict, fn: Callable[[dict, dict], float], templates: list[str],
                 name: str):
        self.spec, self._fn, self.templates, self.name = spec, fn, templates, name

    def check(self, item: dict) -> None:
        probe = make_sample("")
        for t in self.templates:
            for m in _TEMPLATE.finditer(t):
                if m.group(1).startswith("sample."):
                    continue
                try:
                    _lookup(m.group(1), probe, item)
                except KeyError:
                    raise GraderError(f"grader '{self.name}' reads {{{{{m.group(1)}}}}}, which "
                                      f"this record does not have",
                                      hint="add the field to every record, or change the "
                                           "grader's template") from None

    def grade(self, text: str, item: dict) -> float:
        score = float(self._fn(make_sample(text), item))
        if score != score:  # NaN
            raise GraderError(f"grader '{self.name}' returned NaN")
        return score

    def grade_many(self, texts: list[str], items: list[dict]) -> list[float]:
        return [self.grade(t, it) for t, it in zip(texts, items, strict=True)]


def _similarity(metric: str, a: str, b: str) -> float:
    if metric == "fuzzy_match":
        import difflib
        return difflib.SequenceMatcher(None, a, b).ratio()
    if metric == "rouge_l":
        return rouge_l(a, b)
    if metric.startswith("rouge_"):
        from rouge_score import rouge_scorer

        from afinar.eval.metrics import _UnicodeTokenizer
        key = "rouge" + metric[-1]
        return rouge_scorer.RougeScorer([key], tokenizer=_UnicodeTokenizer()).score(
            b, a)[key].fmeasure
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    return float(sentence_bleu([b.split()], a.split(),
                               smoothing_function=SmoothingFunction().method1))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"min": min, "max": max, "abs": abs}


def _formula(expr: str, names: set[str]) -> Callable[[dict], float]:
    """A safe arithmetic expression over the sub-graders' names (+ - * /, min, max, abs)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise GraderError(f"multi grader: calculate_output '{expr}' is not a formula: {e.msg}"
                          ) from None

    def ev(n, env):
        if isinstance(n, ast.Expression):
            return ev(n.body, env)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float):
            return n.value
        if isinstance(n, ast.Name) and n.id in names:
            return env[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left, env), ev(n.right, env))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.operand, env))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _FUNCS:
            return _FUNCS[n.func.id](*(ev(a, env) for a in n.args))
        raise GraderError(f"multi grader: calculate_output '{expr}' may use only the graders' "
                          f"names {sorted(names)}, numbers, + - * / and min, max, abs")
    ev(tree, dict.fromkeys(names, 1.0))  # refuse a bad formula now, not mid-training
    return lambda env: float(ev(tree, env))


def _python(spec: dict, base_dir: Path | None) -> Callable[[dict, dict], float]:
    if "file" in spec:
        path = Path(spec["file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as e:
            raise GraderError(f"python grader: cannot read {path}: {e.strerror}") from None
        where = str(path)
    else:
        source, where = spec.get("source"), "<grader source>"
        if not isinstance(source, str) or not source.strip():
            raise GraderError("python grader: give 'source' (the code) or 'file'")
    scope: dict = {"__name__": "afinar_grader"}
    try:
        exec(compile(source, where, "exec"), scope)  # the user's own grader code
    except Exception as e:
        raise GraderError(f"python grader {where} does not load: {type(e).__name__}: {e}"
                          ) from None
    fn = scope.get("grade")
    if not callable(fn):
        raise GraderError(f"python grader {where} defines no function grade(sample, item)")
    return fn


def _endpoint(url: str, timeout: float = 30.0) -> Callable[[dict, dict], float]:
    import urllib.error
    import urllib.request

    if not re.match(r"https?://", url or ""):
        raise GraderError(f"endpoint grader: url must be http(s)://..., got {url!r}")

    def call(sample: dict, item: dict) -> float:
        req = urllib.request.Request(url, json.dumps({"sample": sample, "item": item}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                got = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise GraderError(f"endpoint grader {url}: {e}") from None
        score = got.get("score") if isinstance(got, dict) else got
        if not isinstance(score, int | float):
            raise GraderError(f"endpoint grader {url} answered {str(got)[:100]!r}; expected "
                              f"a number or {{\"score\": number}}")
        return float(score)
    return call


def _score_model(spec: dict, judge_loader) -> Callable[[dict, dict], float]:
    msgs, rng = spec.get("input"), spec.get("range") or [0, 1]
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
        raise GraderError("score_model grader: 'input' must be a list of messages "
                          "{role, content} (templates allowed)")
    if not spec.get("model"):
        raise GraderError("score_model grader: name the judge's 'model'")
    lo, hi = float(rng[0]), float(rng[1])
    if judge_loader is None:
        raise GraderError("score_model grader: no model can be loaded here")
    state: dict = {}

    def call(sample: dict, item: dict) -> float:
        from afinar.inference.generate import generate

        if "lm" not in state:
            state["lm"] = judge_loader(spec["model"])
        conv = [{"role": m.get("role", "user"), "content": render(m["content"], sample, item)}
                for m in msgs]
        out = generate(state["lm"], [conv], max_new_tokens=8)[0]
        m = re.search(r"-?\d+(?:\.\d+)?", out)
        if not m:
            return 0.0
        return min(1.0, max(0.0, (float(m.group()) - lo) / ((hi - lo) or 1.0)))
    return call


def build_grader(spec: dict | str, *, base_dir: Path | None = None, judge_loader=None,
                 allow_code: bool = True, name: str = "grader") -> Grader:
    """A Grader from its JSON object or shorthand. `allow_code` False refuses python and
    endpoint graders (requests to the server)."""
    if isinstance(spec, str):
        if spec not in SHORTHANDS:
            raise GraderError(f"unknown grader '{spec}'",
                              hint=f"use one of {', '.join(SHORTHANDS)} or a grader object "
                                   f"(types: {', '.join(TYPES)})")
        spec = dict(SHORTHANDS[spec])
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise GraderError(f"grader '{name}': 'type' must be one of {', '.join(TYPES)}, got "
                          f"{spec.get('type') if isinstance(spec, dict) else spec!r}")
    kind = spec["type"]
    name = spec.get("name") or name
    if kind in ("python", "endpoint") and not allow_code:
        raise GraderError(f"grader '{name}': {kind} graders run code or reach services and are "
                          f"taken only from the server's settings",
                          hint="register it in afinar.toml under [graders] and name it")
    inp = spec.get("input", DEFAULT_INPUT)
    ref = spec.get("reference", DEFAULT_REFERENCE)
    templates = [inp, ref] if kind in ("string_check", "text_similarity", "json_match",
                                       "json_fields") else [inp]
    if kind == "string_check":
        op = spec.get("operation", "eq")
        if op not in ("eq", "ne", "like", "ilike"):
            raise GraderError(f"grader '{name}': operation must be eq, ne, like or ilike")

        def fn(s, it):
            a, b = render(inp, s, it).strip(), render(ref, s, it).strip()
            return {"eq": a == b, "ne": a != b, "like": b in a,
                    "ilike": b.lower() in a.lower()}[op]
    elif kind == "text_similarity":
        metric = spec.get("evaluation_metric", "fuzzy_match")
        if metric not in SIMILARITY:
            raise GraderError(f"grader '{name}': evaluation_metric {metric!r} is not available "
                              f"here; use one of {', '.join(SIMILARITY)}")

        def fn(s, it):
            return _similarity(metric, render(inp, s, it), render(ref, s, it))
    elif kind == "json_match":
        def fn(s, it):
            return exact_match(render(inp, s, it), render(ref, s, it))
    elif kind == "json_fields":
        # F1 by default: with recall alone extra or wrong keys cost nothing, and a policy tuned
        # on it learned to add a generic key to every call (benchmarks/README, RFT run 4)
        metric = spec.get("metric", "f1")
        if metric not in ("f1", "recall"):
            raise GraderError(f"grader '{name}': metric must be f1 or recall, got {metric!r}")
        score = field_f1 if metric == "f1" else field_accuracy

        def fn(s, it):
            return score(render(inp, s, it), render(ref, s, it)) or 0.0
    elif kind == "json_schema":
        import jsonschema

        schema = spec.get("schema", {})
        try:
            validator = jsonschema.Draft202012Validator(schema)
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise GraderError(f"grader '{name}': invalid JSON schema: {e.message}") from None

        def fn(s, it):
            ok, val = parse_json(render(inp, s, it))
            return ok and validator.is_valid(val)
    elif kind == "regex":
        try:
            pattern = re.compile(spec.get("pattern", ""))
        except (re.error, TypeError) as e:
            raise GraderError(f"grader '{name}': bad regex pattern: {e}") from None

        def fn(s, it):
            return pattern.search(render(inp, s, it)) is not None
    elif kind == "python":
        fn = _python(spec, base_dir)
    elif kind == "endpoint":
        fn = _endpoint(spec.get("url"))
    elif kind == "score_model":
        fn = _score_model(spec, judge_loader)
        templates = [m["content"] for m in spec["input"]]
    else:  # multi
        subs = spec.get("graders")
        if not isinstance(subs, dict) or not subs:
            raise GraderError(f"grader '{name}': multi needs 'graders': {{name: grader}}")
        parts = {k: build_grader(v, base_dir=base_dir, judge_loader=judge_loader,
                                 allow_code=allow_code, name=k) for k, v in subs.items()}
        # default: the mean of the parts
        expr = spec.get("calculate_output") or f"({' + '.join(parts)}) / {len(parts)}"
        formula = _formula(expr, set(parts))
        templates = [t for g in parts.values() for t in g.templates]

        def fn(s, it):
            return formula({k: g._fn(s, it) for k, g in parts.items()})
    return Grader(spec, fn, templates, name)


def load_grader(arg: str, **kw) -> Grader:
    """The CLI's --grader: a shorthand, a .json file with a grader object, or a .py file with
    grade(sample, item)."""
    if arg in SHORTHANDS:
        return build_grader(arg, **kw)
    p = Path(arg).expanduser()
    if p.suffix == ".py":
        return build_grader({"type": "python", "file": str(p.resolve())}, name=p.stem, **kw)
    if p.suffix == ".json":
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise GraderError(f"cannot read grader file {p}: {e.strerror}") from None
        except ValueError as e:
            raise GraderError(f"grader file {p} is not valid JSON: {e}") from None
        return build_grader(spec, base_dir=p.parent, **kw)
    raise GraderError(f"unknown grader '{arg}'",
                      hint=f"use one of {', '.join(SHORTHANDS)}, a .json grader object or a "
                           f".py file with grade(sample, item)")

"""The decision advisor: four questions (or a look at the user's data) -> RAG, fine-tuning,
continued pre-training, or a combination, with the reasons and the commands that start it.

The matrix is data (rules.yaml): questions with their choices, the approaches with their
comparison rows (cost, time, data, infrastructure, updates, transparency), and ordered rules.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from afinar.errors import ConfigError

RULES_FILE = Path(__file__).with_name("rules.yaml")
COMPARE = ("cost", "time", "data", "infrastructure", "updates", "transparency")
DOC_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".csv", ".xlsx"}
FEW_LABELLED = 200  # fewer pairs than this do not make a fine-tuning set
MANY_LABELLED = 1_000_000
DOMAIN_CORPUS_CHARS = 5_000_000  # ~1M tokens: enough unlabelled text to continue pre-training


@cache
def load_rules(path: Path = RULES_FILE) -> dict:
    """Load and check the matrix: every rule names known questions, choices and approaches,
    and every combination of answers is matched by some rule."""
    m = yaml.safe_load(path.read_text())
    qs, approaches = m["questions"], m["approaches"]
    for r in m["rules"]:
        for k, v in r["when"].items():
            if k not in qs:
                raise ConfigError(f"{path}: rule {r['id']}: unknown question '{k}'")
            for val in v if isinstance(v, list) else [v]:
                if norm(val) not in [norm(c) for c in qs[k]["choices"]]:
                    raise ConfigError(f"{path}: rule {r['id']}: '{val}' is not a choice of {k}")
        for a in r["recommend"]:
            if a not in approaches:
                raise ConfigError(f"{path}: rule {r['id']}: unknown approach '{a}'")
    for combo in all_answers(m):
        if match(m, combo) is None:
            raise ConfigError(f"{path}: no rule covers {combo}")
    return m


def norm(v) -> str:
    # YAML reads yes/no as booleans
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v).strip().lower()


def all_answers(m: dict | None = None) -> list[dict]:
    m = m or load_rules()
    keys = list(m["questions"])
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(
        *[[norm(c) for c in m["questions"][k]["choices"]] for k in keys])]


def match(m: dict, answers: dict) -> dict | None:
    for r in m["rules"]:
        if all(norm(answers.get(k)) in ([norm(x) for x in v] if isinstance(v, list)
                                         else [norm(v)]) for k, v in r["when"].items()):
            return r
    return None


@dataclass
class Advice:
    answers: dict
    rule: str
    recommend: list[str]
    reasons: list[str]
    approaches: dict
    findings: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"answers": self.answers, "rule": self.rule, "recommend": self.recommend,
                "reasons": self.reasons, "findings": self.findings, "commands": self.commands,
                "comparison": {a: {k: self.approaches[a][k] for k in ("name",) + COMPARE}
                               for a in self.recommend}}

    def render(self) -> str:
        names = " + ".join(self.approaches[a]["name"] for a in self.recommend)
        if self.recommend[:2] == ["cpt", "fine_tuning"]:  # in sequence: CPT, then FT
            names = names.replace(" + Fine", " -> Fine", 1)
        out = [f"Recommendation: {names}", ""]
        if self.findings:
            out += ["What is in the data:"] + [f"  - {f}" for f in self.findings] + [""]
        out += ["Why:"] + [f"  - {r}" for r in self.reasons] + [""]
        width = max(len(k) for k in COMPARE)
        cols = [(a, max(len(self.approaches[a]["name"]), *(len(str(self.approaches[a][k]))
                                                           for k in COMPARE)))
                for a in self.recommend]
        out.append(" " * (width + 2) + " | ".join(f"{self.approaches[a]['name']:<{w}}"
                                                    for a, w in cols))
        for k in COMPARE:
            out.append(f"{k:<{width}}  " + " | ".join(f"{self.approaches[a][k]!s:<{w}}"
                                                        for a, w in cols))
        out += ["", "Start with:"] + [f"  {c}" for c in self.commands]
        return "\n".join(out)


def advise(answers: dict, findings: list[str] | None = None,
           extra_commands: list[str] | None = None) -> Advice:
    m = load_rules()
    clean = {}
    for k, q in m["questions"].items():
        if k not in answers or answers[k] is None:
            raise ConfigError(f"advise: missing answer '{k}' ({q['prompt']})",
                              hint=f"pass --{k} {'|'.join(map(norm, q['choices']))}")
        v = norm(answers[k])
        if v not in [norm(c) for c in q["choices"]]:
            raise ConfigError(f"advise: '{k}' must be one of "
                              f"{', '.join(map(norm, q['choices']))}; got {answers[k]!r}")
        clean[k] = v
    unknown = set(answers) - set(m["questions"])
    if unknown:
        raise ConfigError(f"advise: unknown answer(s) {sorted(unknown)}; the questions are "
                          f"{', '.join(m['questions'])}")
    rule = match(m, clean)
    commands = list(extra_commands or [])
    for a in rule["recommend"]:
        commands += [c for c in m["approaches"][a]["commands"] if c not in commands]
    return Advice(clean, rule["id"], list(rule["recommend"]), list(rule["reasons"]),
                  m["approaches"], list(findings or []), commands)


# -- looking at data ---------------------------------------------------------------------------
def inspect_data(path: Path) -> tuple[dict, list[str], list[str]]:
    """(answers the data implies, findings, commands tailored to it)."""
    from afinar.data.readers import FORMATS, read_records
    from afinar.data.schema import LABEL_FIELDS, detect_schema

    if not path.exists():
        raise ConfigError(f"advise: {path} does not exist")
    from afinar.storage import files_under
    files = [path] if path.is_file() else [p for p in files_under(path)
                                           if not p.name.startswith(".")]
    records, docs, chars = {}, [], 0
    for f in files:
        fmt = FORMATS.get(f.suffix.lower())
        if fmt in ("jsonl", "json", "parquet") or (fmt == "csv" and path.is_file()):
            res = read_records(f)
            for r in res.records:
                if isinstance(r.data, dict):
                    s = detect_schema(r.data)
                    records.setdefault(s, []).append(r.data)
        elif f.suffix.lower() in DOC_SUFFIXES:
            docs.append(f)
            chars += f.stat().st_size
    findings, answers, cmds = [], {}, []
    pairs = sum(len(records.get(s, [])) for s in (
        "prompt_completion", "messages", "instruction", "bedrock_conversation"))
    classified = records.get("classification", [])
    texts = len(records.get("text", [])) + len(records.get("input_text", []))
    if classified:
        label_key = next(k for k in LABEL_FIELDS if k in classified[0])
        classes = sorted({str(r.get(label_key)) for r in classified})
        findings.append(f"{len(classified)} labelled texts in {len(classes)} classes: "
                        f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}")
        answers |= {"specialization": "task", "labelled": _bucket(len(classified))}
        cmds.append(f"afinar train --type classify --train-data {path} --base-model "
                    f"all-minilm-l6-v2 --name my-classifier")
    elif pairs:
        findings.append(f"{pairs} labelled input -> output pairs")
        answers |= {"specialization": "task", "labelled": _bucket(pairs)}
        if pairs < FEW_LABELLED:
            findings.append(f"fewer than {FEW_LABELLED} pairs: too few to fine-tune reliably; "
                            f"collect more")
    elif texts or docs:
        n_chars = chars + sum(len(str(r.get("text") or r.get("input") or ""))
                              for s in ("text", "input_text") for r in records.get(s, []))
        what = f"{len(docs)} documents" if docs else f"{texts} unlabelled texts"
        findings.append(f"{what}, {n_chars / 1e6:.1f} M characters, no labels")
        big = n_chars >= DOMAIN_CORPUS_CHARS
        answers |= {"labelled": "none", "specialization": "domain" if big else "information"}
        findings.append("large enough to continue pre-training on" if big else
                        "small for continued pre-training: retrieval fits best")
        if docs:
            cmds.append(f"afinar kb create my-kb --source {path if path.is_dir() else path.parent}"
                        f" --sync")
    else:
        raise ConfigError(f"advise: found no documents or data records in {path}",
                          hint="point --data at a folder of documents or a JSONL/JSON/CSV/"
                               "Parquet data file")
    return answers, findings, cmds


def _bucket(n: int) -> str:
    if n < FEW_LABELLED:
        return "none"
    return "thousands" if n < MANY_LABELLED else "millions"


def to_json(a: Advice) -> str:
    return json.dumps(a.to_dict(), indent=2)

"""The decision advisor: every combination of answers against an independent statement of the
matrix, every rule reachable, every suggested command a valid afinar command; data-driven advice."""

from __future__ import annotations

import itertools
import json
import shlex

import pytest

from afinar.advisor import advise, all_answers, inspect_data, load_rules
from afinar.errors import ConfigError

from conftest import mapping_rows, write_jsonl


def expected(changing: str, labelled: str, budget: str, spec: str) -> list[str]:
    """The seed's matrix, written out independently of rules.yaml."""
    if spec == "information":
        return ["rag"]
    if spec == "task":
        if labelled == "none":
            return ["rag"]
        return ["fine_tuning", "rag"] if changing == "yes" else ["fine_tuning"]
    if budget == "low":
        return ["rag"] if labelled == "none" else ["fine_tuning", "rag"]
    base = ["cpt"] if labelled == "none" else ["cpt", "fine_tuning"]
    return base + (["rag"] if changing == "yes" else [])


COMBOS = list(itertools.product(["yes", "no"], ["none", "thousands", "millions"],
                                ["low", "medium", "high"], ["information", "task", "domain"]))


@pytest.mark.parametrize("changing, labelled, budget, spec", COMBOS)
def test_every_path_of_the_matrix(changing, labelled, budget, spec):
    a = advise({"changing": changing, "labelled": labelled, "budget": budget,
                "specialization": spec})
    assert a.recommend == expected(changing, labelled, budget, spec)
    assert a.reasons and a.commands
    for name in a.recommend:  # the comparison row is complete for each recommended approach
        row = a.to_dict()["comparison"][name]
        assert all(row[k] for k in ("cost", "time", "data", "infrastructure", "updates",
                                    "transparency"))


def test_every_rule_is_reachable_and_commands_parse():
    from afinar.cli.main import build_parser

    m = load_rules()
    assert len(all_answers()) == len(COMBOS) == 54
    hit = {advise(a).rule for a in all_answers()}
    assert hit == {r["id"] for r in m["rules"]}
    parser = build_parser()
    for appr in m["approaches"].values():
        for cmd in appr["commands"]:
            argv = shlex.split(cmd)
            assert argv[0] == "afinar"
            parser.parse_args(argv[1:])  # exits on an unknown flag


def test_bad_answers_are_named():
    with pytest.raises(ConfigError, match="'budget' must be one of low, medium, high"):
        advise({"changing": "yes", "labelled": "none", "budget": "huge",
                "specialization": "task"})
    with pytest.raises(ConfigError, match="missing answer 'specialization'"):
        advise({"changing": "yes", "labelled": "none", "budget": "low"})


def test_advice_from_data(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Policy\nRefunds within 30 days.\n")
    (docs / "b.html").write_text("<p>Shipping takes 2 days.</p>")
    ans, findings, cmds = inspect_data(docs)
    assert ans == {"labelled": "none", "specialization": "information"}
    assert "2 documents" in findings[0] and any("kb create" in c for c in cmds)

    big = tmp_path / "corpus"
    big.mkdir()
    (big / "domain.txt").write_text("Clinical note about dosage and contraindications. " * 110_000)
    ans, _, _ = inspect_data(big)
    assert ans == {"labelled": "none", "specialization": "domain"}
    assert advise(ans | {"changing": "no", "budget": "high"}).recommend == ["cpt"]

    pairs = write_jsonl(tmp_path / "pairs.jsonl", mapping_rows(64) * 5)
    ans, findings, _ = inspect_data(pairs)
    assert ans == {"specialization": "task", "labelled": "thousands"}
    assert findings == ["320 labelled input -> output pairs"]
    few = write_jsonl(tmp_path / "few.jsonl", mapping_rows(20))
    ans, findings, _ = inspect_data(few)
    assert ans["labelled"] == "none" and "too few" in findings[1]

    cls = write_jsonl(tmp_path / "cls.jsonl", [
        {"text": f"message {i}", "label": ["billing", "bug", "praise"][i % 3]}
        for i in range(300)])
    ans, findings, cmds = inspect_data(cls)
    assert ans == {"specialization": "task", "labelled": "thousands"}
    assert "3 classes: billing, bug, praise" in findings[0]
    assert cmds[0].startswith("afinar train --type classify")


def test_cli_advise(tmp_path, capsys):
    from afinar.cli.main import main

    assert main(["advise", "--changing", "no", "--labelled", "thousands", "--budget", "medium",
                 "--specialization", "task", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommend"] == ["fine_tuning"] and out["rule"] == "task-labels-stable"
    assert main(["advise", "--answers", json.dumps({"changing": "yes", "labelled": "none",
                                                    "budget": "low",
                                                    "specialization": "domain"})]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Recommendation: RAG (knowledge base)") and "Start with:" in text
    cls = write_jsonl(tmp_path / "cls.jsonl", [
        {"text": f"m {i}", "label": ["a", "b"][i % 2]} for i in range(400)])
    assert main(["advise", "--data", str(cls), "--changing", "yes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommend"] == ["fine_tuning", "rag"]
    assert "assumed budget=medium (pass --budget to change it)" in out["findings"]
    assert main(["advise", "--changing", "yes", "--json"]) == 2  # not interactive: says what
    assert "missing answer 'labelled'" in capsys.readouterr().err

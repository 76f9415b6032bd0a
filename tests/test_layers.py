"""Imports point down the layers of DESIGN.md: a package may import only from layers below it
(the top layer's packages may import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "afinar"

# higher imports lower; equal ranks only at the top
RANK = {
    **dict.fromkeys(["cli", "serve", "webui", "demo", "sdk", "catalog", "advisor"], 10),
    "jobs": 9, "training": 8, "eval": 7, "rag": 6, "inference": 5, "data": 4, "models": 3,
    "storage": 2,
    **dict.fromkeys(["db", "runtime", "config", "progress", "jsonutil"], 1),
    **dict.fromkeys(["errors", "__version__", "__init__", "py"], 0),
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("afinar"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:  # from afinar import db
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("afinar."))
    return out


def test_imports_point_down():
    wrong = []
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).parts
        pkg = rel[0].removesuffix(".py")
        assert pkg in RANK, f"{pkg}: place this package in a layer (tests/test_layers.py)"
        for target in _imports(f) - {pkg}:
            assert target in RANK, f"{target}: place it in a layer (tests/test_layers.py)"
            if RANK[target] > RANK[pkg] or (RANK[target] == RANK[pkg] < 10):
                wrong.append(f"{f.relative_to(SRC)} imports afinar.{target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: a lower layer importing a higher one is reported."""
    f = tmp_path / "x.py"
    f.write_text("from afinar.jobs import store\nimport afinar.training.trainer\n")
    assert _imports(f) == {"jobs", "training"}
    assert RANK["jobs"] > RANK["rag"] and RANK["training"] > RANK["inference"]

"""The CLI commands, run in-process (and the entry point once as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from afinar.cli.main import main

from conftest import REPO, mapping_rows, write_jsonl


def run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_data_check_text_and_json(tmp_path, capsys, tiny_model_dir):
    p = write_jsonl(tmp_path / "d.jsonl", mapping_rows(8) + ['{"prompt": oops}'])
    rc, out, _ = run(capsys, "data", "check", str(p), "--model", str(tiny_model_dir))
    assert rc == 1 and "line 9" in out and "malformed JSON" in out and "too few" in out
    rc, out, _ = run(capsys, "data", "check", str(p), "--json", "--no-tokens")
    rep = json.loads(out)
    assert rc == 1 and rep["errors"][0]["line"] == 9 and rep["schema"] == "prompt_completion"


def test_data_split_and_train_and_eval(tmp_path, capsys, tiny_model_dir):
    p = write_jsonl(tmp_path / "d.jsonl", mapping_rows(40))
    rc, out, _ = run(capsys, "data", "split", str(p), "--out", str(tmp_path / "s"))
    assert rc == 0 and (tmp_path / "s" / "train.jsonl").exists()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"train_data: {tmp_path / 's' / 'train.jsonl'}\nbase_model: {tiny_model_dir}\n"
                   f"hyperParameters:\n  epochCount: '1'\n  batchSize: '8'\n")
    rc, out, err = run(capsys, "-q", "train", "--config", str(cfg), "--name", "cli-run",
                       "--learning-rate", "0.01", "--json")
    res = json.loads(out)
    assert rc == 0 and res["status"] == "completed" and res["steps"] == 4
    rc, out, _ = run(capsys, "models", "list")
    assert "cli-run" in out and "smollm2-135m-instruct" in out
    rc, out, _ = run(capsys, "models", "show", "cli-run", "--json")
    assert json.loads(out)["lineage"] == [str(tiny_model_dir), "cli-run"]
    rc, out, _ = run(capsys, "-q", "eval", "--model", "cli-run", "--compare-base", "--data",
                     str(tmp_path / "s" / "test.jsonl"), "--json", "--max-new-tokens", "3",
                     "--output-dir", str(tmp_path / "rep"))
    rep = json.loads(out)
    assert rc == 0 and [m["id"] for m in rep["models"]] == [str(tiny_model_dir), "cli-run"]
    assert (tmp_path / "rep" / "report.md").exists()
    # the evaluation is a job of the store: the console's evaluation page lists it
    from afinar.config import load_settings
    from afinar.jobs.service import JobService
    evs = JobService(load_settings()).evaluations.list_afinar()
    assert [(e["status"], e["models"]) for e in evs] == [("Completed", ["cli-run"])]
    rc, out, _ = run(capsys, "generate", "--model", "cli-run", "--max-new-tokens", "3",
                     "Colour of sky?", "--json")
    assert rc == 0 and json.loads(out)[0]["prompt"] == "Colour of sky?"


@pytest.mark.parametrize("argv,msg", [
    (["train", "--train-data", "nope.jsonl"], "file not found"),
    (["train", "--train-data", "x.jsonl", "--epochCount", "0"], "epochCount"),
    (["train"], "no training data"),
    (["models", "show", "no-such-model"], "unknown model"),
    (["eval", "--model", "smollm2-135m-instruct", "--compare-base", "--data", "x.jsonl"],
     "not a custom model"),
])
def test_errors_are_messages_not_tracebacks(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and msg in err and "Traceback" not in err


def test_bad_config_file(tmp_path, capsys, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    (home / "afinar.toml").write_text("port = 'many'\n")
    monkeypatch.setenv("AFINAR_HOME", str(home))
    rc, _, err = run(capsys, "models", "list")
    assert rc == 2 and "port" in err


def test_entry_point_and_help():
    exe = REPO / ".venv" / "bin" / "afinar"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "afinar.cli.main"]
    r = subprocess.run(cmd + ["train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--epochCount" in r.stdout and "--learning-rate" in r.stdout


def test_flags_are_kebab_case_and_api_spellings_are_exact_aliases():
    """One convention: every flag of every command is kebab-case; Bedrock's spellings
    (--epochCount, --trainingSamplePerPrompt) are aliases that take no part in prefix
    matching, so `--train` still means --train-data."""
    import argparse
    import re

    from afinar.cli.main import build_parser

    p = build_parser()
    a = p.parse_args(["train", "--train", "x.jsonl", "--validation-d", "v.jsonl", "--epochCount", "3",
                      "--batchSize=4", "--trainingSamplePerPrompt", "8", "--type", "rft"])
    assert (a.train_data, a.validation_data, a.epochs, a.batch_size,
            str(a.samples_per_prompt)) == ("x.jsonl", "v.jsonl", "3", "4", "8")
    bad = []

    def walk(parser, path):
        for act in parser._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sp in act.choices.items():
                    walk(sp, f"{path} {name}")
            for s in act.option_strings:
                if not re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*|-[a-zA-Z]", s):
                    bad.append(f"{path}: {s}")
    walk(p, "afinar")
    assert not bad, bad

"""The README's commands stay true, and the demo pipeline runs end to end on a tiny model."""

from __future__ import annotations

import os
import re
import shlex

from afinar.cli.main import build_parser

from conftest import REPO


def test_readme_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    cmds = [ln.split("#")[0].strip() for ln in first_block.splitlines() if ln.strip()]
    assert cmds == ["./scripts/demo.sh", "./scripts/test.sh"]
    for c in cmds:
        assert os.access(REPO / c, os.X_OK)
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_every_afinar_command_in_readme_parses():
    text = (REPO / "README.md").read_text()
    parser = build_parser()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = " \n".join(blocks).replace("\\\n", " ").splitlines()
    cmds = [ln.split("  #")[0].strip() for ln in lines if ln.strip().startswith("afinar ")]
    assert len(cmds) >= 8
    for c in cmds:
        argv = [a for a in shlex.split(c)[1:] if a != "..."]
        parser.parse_args(argv)  # SystemExit on an unknown command or flag


def test_demo_pipeline_on_tiny_model(tmp_path, settings, tiny_model_dir):
    from afinar.demo.stripe import DemoOptions, run_demo

    said = []
    opts = DemoOptions(train_examples=24, validation_examples=6, test_examples=6, epochs=1,
                       batch_size=8, base_model=str(tiny_model_dir), lora_layers=None,
                       output_dir=str(tmp_path / "demo"))
    rep = run_demo(opts, settings, say=said.append)
    assert [m["id"] for m in rep["models"]][0] == str(tiny_model_dir)
    assert rep["n"] == 6 and {"exact_match", "valid_json", "field_accuracy",
                              "rouge_l"} <= set(rep["models"][1]["metrics"])
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "| step | epoch | training loss |" in md
    assert any(s.startswith("[6/6]") for s in said)
    assert (tmp_path / "demo" / "model" / "training_artifacts" /
            "step_wise_training_metrics.csv").exists()

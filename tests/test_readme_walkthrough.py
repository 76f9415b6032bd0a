"""The README's walkthrough runs as written: the course's Bedrock customization snippet (a role
ARN with 9 account digits), its evaluation job, and a SageMaker Hugging Face estimator with a
plain transformers script, against a real server. Only the port changes (and the polling
interval); the server maps the default model's ids to a tiny model so it takes seconds."""

from __future__ import annotations

import re
import signal

import pytest

from servers import Server

from conftest import REPO

pytestmark = pytest.mark.slow


def _blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_walkthrough_blocks_run_as_written(tmp_path, tiny_model_dir, monkeypatch):
    blocks = _blocks()
    assert len(blocks) == 4
    assert "roleArn=\"arn:aws:iam::123456789:role/BedrockRole\"" in blocks[1]
    tiny = str(tiny_model_dir)
    s = Server(tmp_path / "srv", tiny_model_dir, extra_toml="").start()
    try:
        # the default model's ids -> the tiny model (a 135M run would take minutes)
        toml = (s.home / "afinar.toml").read_text()
        (s.home / "afinar.toml").write_text(
            toml + f'"smollm2-135m-instruct" = "{tiny}"\n'
                   f'"HuggingFaceTB/SmolLM2-135M-Instruct" = "{tiny}"\n')
        s.kill(signal.SIGTERM)
        s.start()
        monkeypatch.setenv("AFINAR_HOME", str(s.home))
        monkeypatch.chdir(REPO)
        ns: dict = {}
        for code in blocks:
            code = code.replace("http://127.0.0.1:8080", s.url).replace(
                "time.sleep(10)", "time.sleep(0.5)")
            exec(compile(code, "README walkthrough", "exec"), ns)  # noqa: S102
        assert ns["status"] == "Completed"
        bedrock = ns["bedrock"]
        job = bedrock.get_model_customization_job(jobIdentifier=ns["job_arn"])
        assert job["status"] == "Completed" and job["roleArn"].endswith(":123456789:role/"
                                                                        "BedrockRole")
        assert bedrock.get_custom_model(modelIdentifier="mi-modelo")["modelStatus"] == "Active"
        ev = bedrock.get_evaluation_job(jobIdentifier=ns["eval_job"]["jobArn"])
        assert ev["status"] == "Completed"
        out = list((s.home / "s3" / "mi-bucket" / "evaluation").rglob("*_output.jsonl"))
        assert out, "the evaluation wrote no results"
        assert ns["huggingface_estimator"].latest_training_job.status == "Completed"
    finally:
        s.kill(signal.SIGTERM)

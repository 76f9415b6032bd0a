"""The recipe catalog over HTTP: GET /afinar/catalog, GET /afinar/catalog/{name}, and
POST /afinar/catalog/{name}/run, which writes the recipe's sample data under the bucket root
(or takes `trainingDataUri`) and creates a model customization job, or for a rag recipe a
knowledge base with an ingestion job. Body (all optional): jobName, customModelName,
baseModelIdentifier, trainingDataUri, validationDataUri."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from afinar import jsonutil
from afinar.errors import AfinarError
from afinar.serve import errors
from afinar.serve.awsproto import ApiError

BUCKET = "afinar-catalog"
RUN_FIELDS = ("jobName", "customModelName", "baseModelIdentifier", "trainingDataUri",
              "validationDataUri")


def _run_params(p) -> dict:
    """The run body's fields, each a short string; anything else is refused by name."""
    if not isinstance(p, dict):
        raise ApiError("ValidationException", "the body must be a JSON object")
    for key, value in p.items():
        if key not in RUN_FIELDS:
            raise ApiError("ValidationException", f"unknown field '{key[:80]}'; a run takes "
                           f"{', '.join(RUN_FIELDS)}")
        if not isinstance(value, str) or not 0 < len(value) <= 1024:
            raise ApiError("ValidationException", f"'{key}' must be a string of 1-1024 "
                           f"characters")
    return p


def router(settings, service, knowledge) -> APIRouter:
    r = APIRouter(prefix="/afinar/catalog")

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"message": message, "code": code}, status_code=status)

    @r.get("")
    async def list_recipes():
        from afinar.catalog import load_catalog
        return {"recipes": [x.summary() for x in load_catalog().values()]}

    @r.get("/{name}")
    async def show(name: str):
        from afinar.catalog import get_recipe
        try:
            return get_recipe(name).model_dump()
        except AfinarError as e:
            status, code, _ = errors.lookup(e)
            return error(status, code, errors.message(e))

    @r.post("/{name}/run")
    async def run(name: str, request: Request):
        body = await request.body()
        try:
            p = _run_params(jsonutil.loads(body or b"{}"))
            return await run_in_threadpool(_run, name, p)
        except jsonutil.JSONProblem as e:
            return error(400, "ValidationException", f"invalid JSON body: {e.message}")
        except ApiError as e:
            return error(e.status or 400, e.code, e.message)
        except AfinarError as e:
            status, code, _ = errors.lookup(e)
            return error(status, code, errors.message(e))

    def _run(name: str, p: dict) -> dict:
        from afinar.catalog import get_recipe, sample_data
        from afinar.storage import Storage

        rec = get_recipe(name)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        prefix = f"s3://{BUCKET}/{rec.name}/{stamp}"
        if rec.type == "rag":
            local = settings.home / "catalog" / f"{rec.name}-{stamp}"
            paths = sample_data(rec, local)
            kbs = knowledge.kbs
            kb = kbs.create(p.get("customModelName") or f"{rec.name}-{stamp}",
                            rec.embedding_model)
            src = kbs.add_source(kb["id"], "docs", str(paths["docs"]),
                                 chunking_config=rec.chunking)
            job = knowledge.start_ingestion({"knowledgeBaseId": kb["id"],
                                             "dataSourceId": src["id"]})["ingestionJob"]
            return {"recipe": rec.name, "knowledgeBaseId": kb["id"], "dataSourceId": src["id"],
                    "ingestionJobId": job["ingestionJobId"]}
        storage = Storage(settings)
        train_uri, valid_uri = p.get("trainingDataUri"), p.get("validationDataUri")
        if not train_uri:
            tmp = settings.home / "catalog" / f"{rec.name}-{stamp}"
            paths = sample_data(rec, tmp)
            storage.publish(tmp, storage.locate(prefix, "catalog"))
            train_uri = f"{prefix}/train.jsonl"
            if rec.type == "cpt":
                valid_uri = valid_uri or f"{prefix}/eval.jsonl"
        hp = {k: str(v).lower() if isinstance(v, bool) else str(v)
              for k, v in rec.hyperparameters.items() if v is not None}
        if rec.type == "classify":
            hp["type"] = "classify"
        req = {"jobName": p.get("jobName") or f"{rec.name}-{stamp}",
               "customModelName": p.get("customModelName") or f"{rec.name}-{stamp}",
               "roleArn": f"arn:aws:iam::{settings.account_id}:role/afinar-catalog",
               "baseModelIdentifier": p.get("baseModelIdentifier") or rec.base_model,
               "customizationType": rec.bedrock_type(),
               "trainingDataConfig": {"s3Uri": train_uri},
               "outputDataConfig": {"s3Uri": f"{prefix}/output/"},
               "hyperParameters": hp}
        if valid_uri:
            req["validationDataConfig"] = {"validators": [{"s3Uri": valid_uri}]}
        out = service.create_job(req)
        return {"recipe": rec.name, "jobArn": out["jobArn"], "jobName": req["jobName"],
                "customModelName": req["customModelName"], "trainingDataUri": train_uri}

    return r

"""afinar's evaluation routes (the console's evaluation page): `POST /afinar/evaluations`
({"models": [ids], "data": URI, "compareBase": bool, "maxExamples": int}) creates an
evaluation job (jobs/evaluations.py) in the one job store; `GET /afinar/evaluations[/<id>]`
reports status, metrics and the report files; `.../report.html` is the report. Bedrock's
evaluation jobs are listed here too. Only translation happens here: the rules, the queue
bound (429) and the per-kind limit are the job system's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from afinar import jsonutil
from afinar.errors import AfinarError
from afinar.serve.errors import lookup, message


def _err(e: AfinarError) -> JSONResponse:
    return JSONResponse({"message": message(e)}, status_code=lookup(e)[0])


def router(service) -> APIRouter:
    ev = service.evaluations
    r = APIRouter(prefix="/afinar/evaluations")

    @r.post("")
    async def create(request: Request):
        try:
            body = jsonutil.loads(await request.body())
            if not isinstance(body, dict):
                return JSONResponse({"message": "the body must be a JSON object"}, 400)
            return JSONResponse(await run_in_threadpool(ev.create_afinar, body),
                                status_code=201)
        except (ValueError, RecursionError) as e:
            return JSONResponse({"message": str(e)}, status_code=400)
        except AfinarError as e:
            return _err(e)

    @r.get("")
    async def list_all():
        return {"evaluations": await run_in_threadpool(ev.list_afinar)}

    @r.get("/{eid}")
    async def get(eid: str):
        try:
            return await run_in_threadpool(ev.get_afinar, eid)
        except AfinarError as e:
            return _err(e)

    @r.get("/{eid}/report.html")
    async def report_html(eid: str):
        try:
            return HTMLResponse(await run_in_threadpool(ev.report_html, eid))
        except AfinarError as e:
            return _err(e)

    return r

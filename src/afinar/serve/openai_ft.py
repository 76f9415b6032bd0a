"""OpenAI's Files and fine-tuning routes (`/v1/files`, `/v1/fine_tuning/jobs`,
`DELETE /v1/models/{id}`): they translate HTTP to jobs/files.py and jobs/openai_ft.py and
typed errors to OpenAI's error body."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from afinar.errors import AfinarError
from afinar.jobs.files import MAX_BYTES
from afinar.serve import errors


def _fail(e: AfinarError) -> JSONResponse:
    status, _, code = errors.lookup(e)
    return JSONResponse({"error": {
        "message": e.message, "type": "invalid_request_error" if status < 500 else
        "server_error", "param": getattr(e, "param", None),
        "code": None if code == "invalid_request_error" else code}}, status_code=status)


async def _call(fn, *args, **kw):
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except AfinarError as e:
        return _fail(e)


def _int(v: str | None, name: str, default: int) -> int:
    from afinar.jobs.openai_ft import BadParam

    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise BadParam(f"{name} must be an integer", name) from None


def router(ft) -> APIRouter:
    """`ft`: jobs.openai_ft.FineTuning (its `files` is the FileStore)."""
    r = APIRouter(prefix="/v1")
    files = ft.files

    # -- files ------------------------------------------------------------------------------
    @r.post("/files")
    async def create_file(request: Request):
        from afinar.jobs.openai_ft import BadParam

        form = await request.form(max_part_size=MAX_BYTES + 1)
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            return _fail(BadParam("missing required parameter: 'file' (a multipart upload)",
                                  "file"))
        if not isinstance(purpose, str) or not purpose:
            return _fail(BadParam("missing required parameter: 'purpose'", "purpose"))
        data = await upload.read(MAX_BYTES + 1)
        return await _call(files.create, upload.filename or "upload", data, purpose)

    @r.get("/files")
    async def list_files(purpose: str | None = None, after: str | None = None,
                         limit: str | None = None, order: str = "desc"):
        return await _call(lambda: files.list(purpose, after, _int(limit, "limit", 10000),
                                              order))

    @r.get("/files/{file_id}")
    async def get_file(file_id: str):
        return await _call(files.get, file_id)

    @r.get("/files/{file_id}/content")
    async def file_content(file_id: str):
        got = await _call(files.content, file_id)
        return got if isinstance(got, JSONResponse) else Response(
            got, media_type="application/octet-stream")

    @r.delete("/files/{file_id}")
    async def delete_file(file_id: str):
        return await _call(files.delete, file_id)

    # -- fine-tuning jobs -------------------------------------------------------------------
    @r.post("/fine_tuning/jobs")
    async def create_job(request: Request):
        from afinar import jsonutil
        from afinar.jobs.openai_ft import BadParam

        try:
            body = jsonutil.loads(await request.body())
        except ValueError as e:
            return _fail(BadParam(f"the request body is not valid JSON: {e}"))
        return await _call(ft.create, body)

    @r.get("/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: str | None = None):
        meta = {m.group(1): v for k, v in request.query_params.multi_items()
                if (m := re.fullmatch(r"metadata\[(.+)\]", k))}
        return await _call(lambda: ft.list(after, _int(limit, "limit", 20), meta or None))

    @r.get("/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str):
        return await _call(ft.get, job_id)

    def control(action: str):
        async def route(job_id: str):
            return await _call(getattr(ft, action), job_id)
        r.add_api_route(f"/fine_tuning/jobs/{{job_id}}/{action}", route, methods=["POST"],
                        name=f"fine_tuning_{action}")

    for action in ("cancel", "pause", "resume"):
        control(action)

    @r.get("/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, after: str | None = None, limit: str | None = None):
        return await _call(lambda: ft.events(job_id, after, _int(limit, "limit", 20)))

    @r.get("/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, after: str | None = None, limit: str | None = None):
        return await _call(lambda: ft.checkpoints(job_id, after, _int(limit, "limit", 10)))

    # -- fine-tuned models ------------------------------------------------------------------
    @r.delete("/models/{model_id:path}")
    async def delete_model(model_id: str):
        return await _call(ft.delete_model, model_id)

    return r

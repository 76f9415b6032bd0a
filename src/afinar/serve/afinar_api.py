"""afinar's own public HTTP routes beside the Bedrock ones (documented in the README; the web
console uses them as any client would):

- GET  /afinar/jobs/{job}/metrics  step-wise training and validation metrics, as the job runs
- POST /afinar/jobs/{job}/resume  queue a Failed or Stopped job again; it resumes from its last
       checkpoint
- POST /afinar/uploads?filename=NAME  the request body stored under the bucket root; returns
       its s3:// URI (for the create-job form)
- POST /afinar/data/check?filename=NAME  the body checked as a dataset: schema, line-level
       errors, duplicates, lengths, class balance, size guidance (nothing is stored); or
       ?s3Uri=s3://... to check a dataset already in storage
- GET  /afinar/advise?changing=&labelled=&budget=&specialization=  the advisor's recommendation
"""

from __future__ import annotations

import csv
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from afinar.errors import AfinarError
from afinar.serve import errors
from afinar.serve.awsproto import ApiError

UPLOAD_BUCKET = "afinar-uploads"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STEP = re.compile(r"step (\d+)/(\d+)\b")


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "code": code}, status_code=status)


def _read_csv(p: Path) -> list[dict]:
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _last_step_event(engine, job_id: str) -> str | None:
    """The worker's latest "step N/TOTAL ..." event (one row, newest first)."""
    from sqlalchemy import select

    from afinar import db
    e = db.events
    with engine.connect() as c:
        return c.execute(select(e.c.message).where(
            (e.c.job_id == job_id) & e.c.message.like("step %")).order_by(
            e.c.id.desc()).limit(1)).scalar()


def router(settings, service) -> APIRouter:
    r = APIRouter(prefix="/afinar")

    @r.get("/jobs/{job}/metrics")
    async def metrics(job: str):
        from afinar.training.metrics import TRAIN_CSV, VALID_CSV
        try:
            row = await run_in_threadpool(service._job_row, job)
        except AfinarError as e:
            return _err(*errors.lookup(e)[:2], errors.message(e))
        run = settings.jobs_dir / row.id / "run"
        last = await run_in_threadpool(_last_step_event, service.engine, row.id)
        m = _STEP.match(last or "")
        progress = {"step": int(m.group(1)), "total": int(m.group(2))} if m else None
        return {"jobName": row.name, "status": row.status, "progress": progress,
                "training": _read_csv(run / TRAIN_CSV), "validation": _read_csv(run / VALID_CSV)}

    @r.post("/jobs/{job}/resume")
    async def resume(job: str):
        """Resume a Failed or Stopped job from its last checkpoint."""
        try:
            return await run_in_threadpool(service.resume_job, job)
        except AfinarError as e:
            return _err(*errors.lookup(e)[:2], errors.message(e))

    async def _spool(request: Request, dest: Path) -> int:
        """The body streamed to `dest` (the gate bounds it by max_upload_mb); its size."""
        n = 0
        with open(dest, "wb") as f:
            async for chunk in request.stream():
                n += len(chunk)
                await run_in_threadpool(f.write, chunk)
        if n == 0:
            raise ApiError("ValidationException", "the request body (the file) is empty")
        return n

    def _safe_name(filename: str) -> str:
        return _SAFE.sub("-", Path(filename).name).strip("-.")[:100] or "data.jsonl"

    @r.post("/uploads")
    async def upload(request: Request, filename: str = "data.jsonl"):
        from afinar.storage import Storage
        name = _safe_name(filename)
        key = f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}/{name}"
        storage = Storage(settings)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / Path(key).parent
            d.mkdir(parents=True)
            try:
                size = await _spool(request, d / name)
            except ApiError as e:
                return _err(400, e.code, e.message)
            await run_in_threadpool(storage.publish, d,
                                    storage.locate(f"s3://{UPLOAD_BUCKET}/{Path(key).parent}",
                                                   "upload"))
        return {"s3Uri": f"s3://{UPLOAD_BUCKET}/{key}", "bytes": size}

    @r.post("/data/check")
    async def data_check(request: Request, filename: str = "data.jsonl",
                         s3Uri: str | None = None):  # noqa: N803 - Bedrock's spelling
        """The body is the dataset; or, with `s3Uri`, a dataset already in storage."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if s3Uri:
                    p = await run_in_threadpool(_fetch, s3Uri, Path(tmp))
                    name = _safe_name(s3Uri)
                else:
                    name = _safe_name(filename)
                    p = Path(tmp) / name
                    await _spool(request, p)
            except ApiError as e:
                return _err(400, e.code, e.message)
            return await run_in_threadpool(_check, p, name)

    def _fetch(uri: str, tmp: Path) -> Path:
        from afinar.storage import Storage, StorageError
        st = Storage(settings)
        try:
            p = st.fetch(st.locate(uri, "s3Uri"), tmp, "s3Uri")
        except StorageError as e:
            raise ApiError("ValidationException", str(e)) from None
        if p.stat().st_size > settings.max_upload_mb * 2**20:
            raise ApiError("ValidationException", f"{uri} is larger than max_upload_mb "
                           f"({settings.max_upload_mb} MB)")
        return p

    def _check(p: Path, name: str) -> dict | JSONResponse:
        from afinar.data.check import check_file
        from afinar.data.readers import read_records
        from afinar.data.schema import normalize
        try:
            rep = check_file(p).to_dict()
            exs = normalize(read_records(p)).examples
        except AfinarError as e:  # say the user's file name, never the server's temp path
            return _err(400, "ValidationException", str(e).replace(str(p), name))
        rep["file"] = name
        for i in rep["errors"]:  # the temporary copy's path means nothing to the user
            i["file"] = name
        lengths = [len(e.content_key()) for e in exs]
        if lengths:  # a histogram of record lengths in characters, 10 bins
            lo, hi = min(lengths), max(lengths)
            width = max(1, (hi - lo) // 10 + 1)
            bins = [0] * 10
            for n in lengths:
                bins[min(9, (n - lo) // width)] += 1
            rep["length_histogram"] = {"unit": "characters", "edges": [
                lo + i * width for i in range(11)], "counts": bins}
        return rep

    @r.get("/advise")
    async def advise(changing: str | None = None, labelled: str | None = None,
                     budget: str | None = None, specialization: str | None = None):
        from afinar.advisor import advise as run
        try:
            return run({"changing": changing, "labelled": labelled, "budget": budget,
                        "specialization": specialization}).to_dict()
        except AfinarError as e:
            return _err(400, "ValidationException", e.message)

    return r

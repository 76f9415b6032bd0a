"""Evaluation jobs over HTTP: `POST /afinar/evaluations` runs `afinar eval` in a subprocess
(models compared on a dataset, the report written under $AFINAR_HOME/evaluations/<id>/report),
`GET /afinar/evaluations[/<id>]` reports status, metrics and the report files.

Request: {"models": [ids], "data": "s3://... | file://... | path", "compareBase": bool,
"maxExamples": int}. Each evaluation's state is a JSON file next to its report, so a restarted
server still lists it (one that was running when the server died is marked failed).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from afinar.config import Settings
from afinar.storage import Storage, StorageError


def _err(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"message": msg}, status_code=status)


class Evaluations:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.home / "evaluations"
        self.procs: dict[str, subprocess.Popen] = {}

    def _state(self, eid: str) -> dict | None:
        p = self.root / eid / "state.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _save(self, st: dict) -> None:
        p = self.root / st["id"] / "state.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(p)

    def create(self, body: dict) -> dict:
        models = body.get("models")
        if not isinstance(models, list) or not models or not all(
                isinstance(m, str) and m for m in models):
            raise ValueError("'models' must be a non-empty list of model ids")
        if not isinstance(body.get("data"), str):
            raise ValueError("'data' must be a URI (s3://, file://) or a path")
        unknown = set(body) - {"models", "data", "compareBase", "maxExamples"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        eid = "eval-" + secrets.token_hex(6)
        d = self.root / eid
        d.mkdir(parents=True)
        st = Storage(self.settings)
        try:
            data = st.fetch(st.locate(body["data"], "data"), d / "inputs", "data")
        except StorageError as e:
            raise ValueError(str(e)) from None
        cmd = [sys.executable, "-m", "afinar.cli.main", "-q", "eval", "--data", str(data),
               "--output-dir", str(d / "report")]
        for m in models:
            cmd += ["--model", m]
        if body.get("compareBase"):
            cmd.append("--compare-base")
        if body.get("maxExamples"):
            cmd += ["--limit", str(int(body["maxExamples"]))]
        env = dict(os.environ, AFINAR_HOME=str(self.settings.home))
        log = open(d / "eval.log", "ab")  # noqa: SIM115 - handed to the child
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        log.close()
        self.procs[eid] = p
        state = {"id": eid, "status": "InProgress", "models": models, "data": body["data"],
                 "compareBase": bool(body.get("compareBase")), "pid": p.pid,
                 "creationTime": time.time(), "endTime": None}
        self._save(state)
        return state

    def get(self, eid: str) -> dict | None:
        st = self._state(eid)
        if st is None:
            return None
        if st["status"] == "InProgress":
            p = self.procs.get(eid)
            rc = p.poll() if p else -1  # not ours: the server restarted while it ran
            if rc is not None:
                d = self.root / eid
                st["endTime"] = time.time()
                if rc == 0 and (d / "report" / "report.json").exists():
                    st["status"] = "Completed"
                else:
                    tail = (d / "eval.log").read_text(errors="replace")[-800:] \
                        if (d / "eval.log").exists() else ""
                    st["status"], st["failureMessage"] = "Failed", (
                        f"afinar eval exited with {rc}: {tail.strip()}" if p else
                        "the server restarted while this evaluation ran")
                self._save(st)
        if st["status"] == "Completed":
            rep = json.loads((self.root / eid / "report" / "report.json").read_text())
            st["metrics"] = {m["id"]: m["metrics"] for m in rep["models"]}
            st["task"] = rep.get("task")
            st["report"] = {k: str(self.root / eid / "report" / f"report.{k}")
                            for k in ("md", "html", "json")}
        return st

    def list(self) -> list[dict]:
        if not self.root.exists():
            return []
        return [self.get(d.name) for d in sorted(self.root.iterdir())
                if (d / "state.json").exists()]


def router(settings: Settings) -> APIRouter:
    ev = Evaluations(settings)
    r = APIRouter(prefix="/afinar/evaluations")

    @r.post("")
    async def create(request: Request):
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return JSONResponse(ev.create(body), status_code=201)
        except ValueError as e:
            return _err(400, str(e))

    @r.get("")
    async def list_all():
        return {"evaluations": ev.list()}

    @r.get("/{eid}")
    async def get(eid: str):
        st = ev.get(eid) if not any(c in eid for c in "/\\.") else None
        return st if st is not None else _err(404, f"no evaluation '{eid}'")

    @r.get("/{eid}/report.html")
    async def report_html(eid: str):
        from fastapi.responses import HTMLResponse
        p = ev.root / eid / "report" / "report.html"
        if any(c in eid for c in "/\\.") or not p.exists():
            return _err(404, f"no report for '{eid}'")
        return HTMLResponse(p.read_text(encoding="utf-8"))

    return r

"""Evaluation jobs over HTTP: `POST /afinar/evaluations` runs `afinar eval` in a subprocess
(models compared on a dataset, the report written under $AFINAR_HOME/evaluations/<id>/report),
`GET /afinar/evaluations[/<id>]` reports status, metrics and the report files.

Request: {"models": [ids], "data": "s3://... | file://... | path", "compareBase": bool,
"maxExamples": int}. Model ids are confined as for inference (registry ids, aliases, custom
models, paths under the roots). At most MAX_RUNNING evaluations run at once; up to MAX_WAITING
more wait (status Queued), beyond that a 429. Each evaluation's state is a JSON file next to its
report, so a restarted server still lists it (one that was running when the server died is
marked failed).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from afinar import jsonutil
from afinar.config import Settings
from afinar.storage import Storage, StorageError

MAX_RUNNING = 1  # each loads its models and generates on all cores
MAX_WAITING = 16
MAX_MODELS = 8


class Busy(Exception):
    """Too many evaluations are waiting (429)."""


def _err(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"message": msg}, status_code=status)


class Evaluations:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.home / "evaluations"
        self.procs: dict[str, subprocess.Popen] = {}
        self.waiting: list[tuple[str, list[str]]] = []  # (id, command), oldest first
        self.lock = threading.Lock()

    def _state(self, eid: str) -> dict | None:
        p = self.root / eid / "state.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _save(self, st: dict) -> None:
        p = self.root / st["id"] / "state.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(p)

    def create(self, body: dict) -> dict:
        from afinar.errors import ModelNotFoundError
        from afinar.models.registry import check_served

        unknown = set(body) - {"models", "data", "compareBase", "maxExamples"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)[:5]}; an evaluation takes "
                             f"models, data, compareBase, maxExamples")
        models = body.get("models")
        if not isinstance(models, list) or not 0 < len(models) <= MAX_MODELS or not all(
                isinstance(m, str) and m for m in models):
            raise ValueError(f"'models' must be a list of 1-{MAX_MODELS} model ids")
        for i, m in enumerate(models):
            try:
                check_served(m, self.settings)
            except ModelNotFoundError as e:
                raise ValueError(f"models[{i}]: {e.message}; {e.hint}") from None
        if not isinstance(body.get("data"), str):
            raise ValueError("'data' must be a URI (s3://, file://) or a path")
        limit = body.get("maxExamples")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 1 <= limit <= 1_000_000):
            raise ValueError(f"'maxExamples' must be an integer from 1 to 1000000; got "
                             f"{json.dumps(limit)[:40]}")
        if not isinstance(body.get("compareBase", False), bool):
            raise ValueError("'compareBase' must be true or false")
        with self.lock:
            if len(self.waiting) >= MAX_WAITING:
                raise Busy(f"{MAX_WAITING} evaluations are already waiting; retry when some "
                           f"have finished")
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
        if limit:
            cmd += ["--limit", str(limit)]
        state = {"id": eid, "status": "Queued", "models": models, "data": body["data"],
                 "compareBase": bool(body.get("compareBase")), "pid": None,
                 "creationTime": time.time(), "endTime": None}
        with self.lock:
            self._save(state)
            self.waiting.append((eid, cmd))
            self._pump()
        return self._state(eid)

    def _pump(self) -> None:
        """Start waiting evaluations while fewer than MAX_RUNNING run (caller holds the lock)."""
        while self.waiting and sum(p.poll() is None for p in self.procs.values()) < MAX_RUNNING:
            eid, cmd = self.waiting.pop(0)
            d = self.root / eid
            env = dict(os.environ, AFINAR_HOME=str(self.settings.home))
            log = open(d / "eval.log", "ab")  # noqa: SIM115 - handed to the child
            p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            log.close()
            self.procs[eid] = p
            st = self._state(eid)
            st.update(status="InProgress", pid=p.pid)
            self._save(st)
            threading.Thread(target=self._reap, args=(p,), daemon=True).start()

    def _reap(self, p: subprocess.Popen) -> None:
        p.wait()
        with self.lock:
            self._pump()

    def get(self, eid: str) -> dict | None:
        st = self._state(eid)
        if st is None:
            return None
        if st["status"] == "Queued":
            with self.lock:  # _pump moves it from waiting to running under this lock
                st = self._state(eid)
                if st["status"] == "Queued" and not any(w[0] == eid for w in self.waiting):
                    st["status"], st["failureMessage"] = "Failed", \
                        "the server restarted while this evaluation waited"
                    st["endTime"] = time.time()
                    self._save(st)
        if st["status"] == "InProgress":
            p = self.procs.get(eid)
            rc = p.poll() if p else -1  # not ours: the server restarted while it ran
            if rc is not None:
                d = self.root / eid
                st["endTime"] = time.time()
                if rc == 0 and (d / "report" / "report.json").exists():
                    st["status"] = "Completed"
                else:
                    from afinar.progress import log_tail
                    tail = log_tail((d / "eval.log").read_text(errors="replace")[-64 * 1024:],
                                    5, 800) if (d / "eval.log").exists() else ""
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
            body = jsonutil.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return JSONResponse(await run_in_threadpool(ev.create, body), status_code=201)
        except Busy as e:
            return _err(429, str(e))
        except (ValueError, RecursionError) as e:
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

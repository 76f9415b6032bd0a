"""The scheduler: a bounded FIFO of job ids, at most `max_concurrent_jobs` workers
(`python -m afinar.jobs.worker JOB_ID`) and at most `job_limits[kind]` of one kind, run by an
executor (jobs/executors.py: local subprocesses or a Ray cluster), with recovery after a
crash."""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from afinar import db
from afinar.config import Settings
from afinar.jobs.states import ACTIVE
from afinar.jobs.store import add_event, finish, job_status, set_fields

MAX_QUEUED = 1000
MAX_ATTEMPTS = 3
STOP_GRACE_S = 120
UNCAPPED = {"ingestion": 1}  # kinds outside max_concurrent_jobs, with their default limit

class Scheduler:
    """A bounded FIFO of job ids and at most `max_concurrent_jobs` workers.

    On start, workers still running for this store (a Ray job that outlived the server) are
    adopted; other jobs a crash left InProgress go back in the queue and resume from their last
    checkpoint (up to MAX_ATTEMPTS starts), jobs left Stopping end Stopped.
    """

    def __init__(self, settings: Settings, engine: Engine):
        self.settings, self.engine = settings, engine
        self.queue: collections.deque[str] = collections.deque()
        from afinar.jobs.executors import make_executor
        self.executor = make_executor(settings)
        self.running: dict = {}  # job id -> the executor's handle (poll, terminate, pid)
        self.kinds: dict[str, str] = {}  # job id -> its kind (looked up once)
        self.stopping_since: dict[str, float] = {}
        self.forced: set[str] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="afinar-scheduler", daemon=True)

    def start(self) -> None:
        self.recover()
        self.thread.start()

    def shutdown(self) -> None:
        self.stopped.set()
        self.wake.set()
        for h in list(self.running.values()):
            h.terminate()  # a local worker checkpoints and resumes on the next start
        deadline = time.time() + 30
        for h in list(self.running.values()):
            h.wait(max(0.1, deadline - time.time()))

    def queued(self) -> int:
        return len(self.queue)

    def enqueue(self, job_id: str) -> None:
        with self.lock:
            self.queue.append(job_id)
        self.wake.set()

    def dequeue(self, job_id: str) -> bool:
        with self.lock:
            if job_id in self.queue:
                self.queue.remove(job_id)
                return True
        return False

    def recover(self) -> None:
        with self.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(db.jobs.c.status.in_(ACTIVE)).order_by(
                db.jobs.c.created_at)).all()
        for r in rows:
            handle = self.executor.adopt(r.id, r.attempts, r.worker_pid)
            if handle is None and _foreground(r):
                # run by the CLI or the SDK in their own process (`afinar eval`, script
                # mode): watched while that process lives, never started a second time
                from afinar.jobs.executors import adopt_process
                handle = adopt_process(r.worker_pid)
            if handle is not None:  # still running (on Ray): watched, not started again
                self.running[r.id] = handle
                add_event(self.engine, r.id, "the server restarted; its worker still runs "
                          "and is watched again")
                continue
            if r.status == "Stopping":
                finish(self.engine, r.id, "Stopped", note="the server restarted while stopping;"
                       " checkpoints kept")
            elif r.attempts >= MAX_ATTEMPTS:
                finish(self.engine, r.id, "Failed", failure=f"the job was interrupted "
                       f"{r.attempts} times (server restarts or crashes); giving up. Its "
                       f"checkpoints and logs are kept in {self.settings.jobs_dir / r.id}")
            else:
                if r.worker_pid:
                    set_fields(self.engine, r.id, worker_pid=None)
                    add_event(self.engine, r.id, "the server restarted while this job ran; "
                              "it will resume from its last checkpoint", "WARN")
                self.queue.append(r.id)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self._reap()
            with self.lock:
                while (job_id := self._next()) is not None:
                    self._launch(job_id)
            self.wake.wait(0.5)
            self.wake.clear()

    def _enforce_stop(self, job_id: str, handle) -> None:
        """A worker that has not honoured a stop within STOP_GRACE_S (it checkpoints and exits
        when it sees Stopping) is ended by its executor: SIGTERM locally, Ray's stop on Ray."""
        if job_status(self.engine, job_id) != "Stopping":
            self.stopping_since.pop(job_id, None)
            return
        since = self.stopping_since.setdefault(job_id, time.time())
        if time.time() - since > STOP_GRACE_S and job_id not in self.forced:
            self.forced.add(job_id)
            add_event(self.engine, job_id, f"the worker did not stop within {STOP_GRACE_S} s; "
                      f"ending it", "WARN")
            (getattr(handle, "stop", None) or handle.terminate)()

    def _kind(self, job_id: str) -> str:
        if job_id not in self.kinds:
            with self.engine.connect() as c:
                self.kinds[job_id] = c.execute(select(db.jobs.c.kind).where(
                    db.jobs.c.id == job_id)).scalar() or "customization"
        return self.kinds[job_id]

    def _next(self) -> str | None:
        """The oldest queued job whose kind is under its limit (others keep their place).
        Ingestion jobs (light: parse and embed documents) run beside the others, at most
        job_limits.ingestion (1) at a time; the other kinds share max_concurrent_jobs."""
        running = collections.Counter(self._kind(j) for j in self.running)
        capped = sum(n for k, n in running.items() if k not in UNCAPPED)
        for job_id in self.queue:
            if job_id in self.running:  # resumed while its last worker is still exiting
                continue
            kind = self._kind(job_id)
            limit = self.settings.job_limits.get(kind, UNCAPPED.get(kind))
            if kind not in UNCAPPED and capped >= self.settings.max_concurrent_jobs:
                continue
            if limit is None or running[kind] < limit:
                self.queue.remove(job_id)
                return job_id
        return None

    def _launch(self, job_id: str) -> None:
        status = job_status(self.engine, job_id)
        if status == "Stopping":  # stopped between leaving the queue and starting
            finish(self.engine, job_id, "Stopped", note="stopped before it started")
        if status != "InProgress":
            return
        d = self.settings.jobs_dir / job_id
        d.mkdir(parents=True, exist_ok=True)
        with self.engine.connect() as c:
            attempt = (c.execute(select(db.jobs.c.attempts).where(
                db.jobs.c.id == job_id)).scalar() or 0) + 1
        env = {"AFINAR_WORKER_SETTINGS": self.settings.model_dump_json()}
        try:
            h = self.executor.launch(job_id, attempt, env)
        except Exception as e:  # the cluster refused it, or is gone
            finish(self.engine, job_id, "Failed", failure=f"the {self.executor.name} executor "
                   f"could not start the worker: {type(e).__name__}: {e}")
            return
        self.running[job_id] = h
        with self.engine.begin() as c:
            c.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(
                worker_pid=h.pid, attempts=attempt, updated_at=db.now()))
        where = f"pid {h.pid}" if h.pid and h.pid > 0 else f"on Ray as {h.sid}"
        add_event(self.engine, job_id, f"worker started ({where})")

    def _reap(self) -> None:
        if self.stopped.is_set():
            return  # shutting down: workers checkpoint and the jobs resume on the next start
        for job_id, p in list(self.running.items()):
            rc = p.poll()
            if rc is None:
                self._enforce_stop(job_id, p)
                continue
            del self.running[job_id]
            self.stopping_since.pop(job_id, None)
            self.kinds.pop(job_id, None)
            status = job_status(self.engine, job_id)
            if status not in ACTIVE:
                continue  # the worker recorded its own end
            if job_id in self.queue:
                continue  # it ended Stopped and was resumed (queued again) before it exited
            if rc < 0:
                why = f"the worker process was killed by {signal.Signals(-rc).name}"
            else:
                why = f"the worker process exited with code {rc} without finishing"
            log = self.settings.jobs_dir / job_id / "worker.log"
            tail = _tail_lines(log, 5)
            end = "Stopped" if status == "Stopping" else "Failed"  # a stop asked for ends Stopped
            finish(self.engine, job_id, end,
                   failure=None if end == "Stopped" else
                   f"{why}. Checkpoints and logs are kept in {log.parent}" +
                   (f"; last log lines: {tail}" if tail else ""))


def _foreground(r) -> bool:
    return r.kind == "script" or bool((r.request or {}).get("local"))


def _tail_lines(p: Path, n: int) -> str:
    from afinar.progress import log_tail
    try:
        with p.open("rb") as f:  # the end of a log that may be large
            f.seek(max(0, p.stat().st_size - 64 * 1024))
            return log_tail(f.read().decode("utf-8", "replace"), n)
    except OSError:
        return ""

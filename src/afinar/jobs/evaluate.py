"""An evaluation job, run by the worker (jobs/worker.py dispatches on the job's kind).

afinar's own evaluation (`/afinar/evaluations`, the console) runs eval/compare.py as `afinar
eval` does; a Bedrock evaluation job runs its plan (eval/automated.py) and publishes Bedrock's
output layout under outputDataConfig.s3Uri. Both write afinar's report in the job's directory
(report/report.html, .md, .json). A stop is honoured between chunks of records; an evaluation
restarted after a crash starts over (it keeps no partial state worth resuming).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from afinar.config import Settings
from afinar.jobs.store import add_event, set_fields
from afinar.progress import ProgressCallback, ProgressEvent, null_progress
from afinar.storage import Storage


def run_evaluation(engine, row, settings: Settings, should_stop: Callable[[], bool],
                   on_progress: ProgressCallback = null_progress) -> str:
    """'Completed' or 'Stopped'; errors raise (the worker fails the job with them).
    `on_progress` also sees the progress (the CLI's bar)."""
    from afinar.eval.automated import Evaluation, Stopped
    from afinar.eval.compare import compare, format_table, write_report

    jobdir = settings.jobs_dir / row.id
    storage = Storage(settings)
    state = {"last": 0.0}

    def progress(ev: ProgressEvent) -> None:
        on_progress(ev)
        now = time.time()
        if ev.total and (now - state["last"] > 10 or ev.current == ev.total):
            state["last"] = now
            add_event(engine, row.id, f"{ev.stage}: {ev.current}/{ev.total}")
        elif ev.total is None and ev.metrics:
            add_event(engine, row.id, f"{ev.stage}: {ev.metrics}")

    if "afinar" in row.request:  # afinar's own: models compared on one dataset
        b = row.request["afinar"]
        data = b["data"] if row.request.get("local") and "://" not in b["data"] else storage.fetch(
            storage.locate(b["data"], "data"), jobdir / "inputs", "data")
        report, runs = compare(b["models"], str(data), settings,
                               compare_base=bool(b.get("compareBase")),
                               limit=b.get("maxExamples"), progress=progress,
                               max_new_tokens=b.get("maxNewTokens"),
                               batch_size=b.get("batchSize") or 16)
        write_report(report, jobdir / "report", run_dirs=runs)
        return "Completed"

    plan = json.loads(json.dumps(row.status_details["plan"]))
    for i, d in enumerate(plan["datasets"]):
        where = f"evaluationConfig.automated.datasetMetricConfigs[{i}].dataset"
        d["path"] = str(storage.fetch(storage.locate(d["uri"], where),
                                      jobdir / "inputs" / str(i), where))
    out = jobdir / "output"
    shutil.rmtree(out, ignore_errors=True)  # a restarted evaluation starts over
    try:
        res = Evaluation(plan, settings, out, progress, should_stop).run()
    except Stopped:
        return "Stopped"
    write_report(res["report"], jobdir / "report", title=f"Evaluation job {row.name}")
    (out / plan["jobName"] / plan["jobId"] / "metrics.json").write_text(
        json.dumps(res["summary"], indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.copytree(jobdir / "report", out / plan["jobName"] / plan["jobId"] / "report")
    uri = row.request["outputDataConfig"]["s3Uri"]
    written = storage.publish(out, storage.locate(uri, "outputDataConfig.s3Uri"))
    add_event(engine, row.id, "results:\n" + format_table(res["report"]))
    add_event(engine, row.id, f"wrote {len(written)} files to {uri.rstrip('/')}/"
              f"{plan['jobName']}/{plan['jobId']}/")
    set_fields(engine, row.id, status_details={**row.status_details,
                                               "summary": res["summary"]})
    return "Completed"



def run_foreground(settings: Settings, body: dict,
                   progress: ProgressCallback = null_progress) -> tuple[str, dict, Path]:
    """`afinar eval`: the evaluation as a job of the store (the console lists it), run here.
    (job name, report, report folder); a failure fails the job and raises."""
    import os

    from afinar.errors import AfinarError
    from afinar.jobs.service import JobService
    from afinar.jobs.store import finish

    svc = JobService(settings)
    name = svc.evaluations.create_afinar(body, local=True)["id"]
    row = svc.evaluations._row(name)
    set_fields(svc.engine, row.id, worker_pid=os.getpid(), attempts=1)
    try:
        run_evaluation(svc.engine, row, settings, lambda: False, progress)
    except (AfinarError, KeyboardInterrupt) as e:
        finish(svc.engine, row.id, "Failed" if isinstance(e, AfinarError) else "Stopped",
               failure=str(e).replace("\n  hint: ", ". Hint: ") or None)
        raise
    finish(svc.engine, row.id, "Completed", note="report written")
    rep = settings.jobs_dir / row.id / "report"
    return name, json.loads((rep / "report.json").read_text(encoding="utf-8")), rep

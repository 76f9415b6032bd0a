"""A batch-inference job, run by the worker (jobs/worker.py dispatches on the job's kind).

Bedrock's model invocation job: a JSONL file of `{"recordId", "modelInput"}` records, where
`modelInput` is the body InvokeModel takes for the model (its provider's native body, or
afinar's own), run through the model with the serving engine's continuous batching. Output, in
Bedrock's layout under the output prefix: `<job id>/<input file name>.out`, one line per record
with `modelOutput` (what InvokeModel answers) or `error` ({errorCode, errorMessage}) — a bad
record fails alone —, and `<job id>/manifest.json.out` with the counts.

Lines are appended as results arrive; a job restarted after a crash or a server restart skips
the records whose lines are already written. A stop is honoured between windows of records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from afinar.config import Settings
from afinar.errors import AfinarError, InvalidRequest
from afinar.jobs.store import add_event, set_fields

WINDOW = 64  # records submitted to the engine together (it batches them continuously)
INPUT_FIELD = "inputDataConfig.s3InputDataConfig.s3Uri"
OUTPUT_FIELD = "outputDataConfig.s3OutputDataConfig.s3Uri"


def _records(path: Path) -> list[tuple[str | None, object, str | None]]:
    """(recordId, modelInput, problem) per non-empty line, in order."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            out.append((f"line-{n}", None, f"line {n}: not JSON ({e.msg})"))
            continue
        if not isinstance(rec, dict):
            out.append((f"line-{n}", rec, f"line {n}: a record must be a JSON object"))
            continue
        rid = rec.get("recordId")
        rid = str(rid) if rid is not None else f"line-{n}"
        if not isinstance(rec.get("modelInput"), dict):
            out.append((rid, rec.get("modelInput"),
                        f"line {n}: 'modelInput' must be an object (the model's request body)"))
            continue
        out.append((rid, rec["modelInput"], None))
    return out


def _written(path: Path) -> tuple[set[str], dict]:
    """Record ids already in the output (a resumed job), and their counts."""
    done, counts = set(), {"successRecordCount": 0, "errorRecordCount": 0,
                           "inputTokenCount": 0, "outputTokenCount": 0}
    if not path.exists():
        return done, counts
    good = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a crash: rewritten below
        good.append(line)
        done.add(rec["recordId"])
        counts["errorRecordCount" if "error" in rec else "successRecordCount"] += 1
        counts["inputTokenCount"] += rec.get("_usage", {}).get("input", 0)
        counts["outputTokenCount"] += rec.get("_usage", {}).get("output", 0)
    path.write_text("".join(x + "\n" for x in good), encoding="utf-8")
    return done, counts


def run_batch(engine, row, settings: Settings, should_stop) -> str:
    """Runs the job; returns "Completed" or "Stopped" (errors raise, and fail the job)."""
    from afinar.inference import bodies
    from afinar.inference.engine import Engine
    from afinar.inference.requests import GenRequest
    from afinar.jobs.service import JobService
    from afinar.storage import Storage

    req, job_id = row.request, row.id
    jobdir = settings.jobs_dir / job_id
    storage = Storage(settings)
    src_uri = req["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
    src = storage.fetch(storage.locate(src_uri, INPUT_FIELD), jobdir / "inputs", INPUT_FIELD)
    records = _records(src)
    out_dir = jobdir / "output" / job_id
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{src.name}.out"
    done, counts = _written(out_file)
    total = len(records)
    family = bodies.provider(req["modelId"])
    ident = JobService(settings, engine).serving_id(req["modelId"])
    timeout_s = float(req.get("timeoutDurationInHours") or 168) * 3600
    started = time.time()
    add_event(engine, job_id, f"{total} records in {src.name}"
              + (f"; {len(done)} already written (resuming)" if done else ""))

    def progress() -> None:
        processed = counts["successRecordCount"] + counts["errorRecordCount"]
        set_fields(engine, job_id, status_details={
            "totalRecordCount": total, "processedRecordCount": processed, **counts})

    gen = Engine(settings, confined=True)
    todo = [r for r in records if r[0] not in done]
    try:
        with open(out_file, "a", encoding="utf-8") as out:
            for s in range(0, len(todo), WINDOW):
                if should_stop():
                    progress()
                    return "Stopped"
                if time.time() - started > timeout_s:
                    raise InvalidRequest(f"timeoutDurationInHours ({timeout_s / 3600:g} h) "
                                         f"elapsed with {len(todo) - s} records left; their "
                                         f"results are not in the output")
                subs = []
                for rid, body, problem in todo[s:s + WINDOW]:
                    if problem is None:
                        try:
                            kw = bodies.request(family, body)
                            subs.append((rid, body, gen.submit(GenRequest(model=ident, **kw)),
                                         None))
                            continue
                        except AfinarError as e:
                            problem = str(e).replace("\n  hint: ", "; ")
                    subs.append((rid, body, None, problem))
                for rid, body, r, problem in subs:
                    line = {"recordId": rid, "modelInput": body}
                    if r is not None:
                        try:
                            r.result(timeout=3600)
                            line["modelOutput"] = bodies.response(family, r, req["modelId"])
                            line["_usage"] = {"input": r.input_tokens,
                                              "output": r.output_tokens}
                            counts["inputTokenCount"] += r.input_tokens
                            counts["outputTokenCount"] += r.output_tokens
                        except (AfinarError, TimeoutError) as e:
                            problem = str(e)
                    if problem is not None:
                        line["error"] = {"errorCode": 400, "errorMessage": problem}
                    counts["errorRecordCount" if problem else "successRecordCount"] += 1
                    out.write(json.dumps(line) + "\n")
                out.flush()
                progress()
    finally:
        gen.close()
    progress()
    manifest = {"totalRecordCount": total, "processedRecordCount": total, **counts}
    (out_dir / "manifest.json.out").write_text(json.dumps(manifest), encoding="utf-8")
    _strip_usage(out_file)
    out_loc = storage.locate(req["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
                             OUTPUT_FIELD)
    written = storage.publish(out_dir.parent, out_loc)
    add_event(engine, job_id, f"{counts['successRecordCount']} records answered, "
              f"{counts['errorRecordCount']} failed; wrote {len(written)} files to "
              f"{out_loc.uri.rstrip('/')}/{job_id}/")
    return "Completed"


def _strip_usage(path: Path) -> None:
    """The published lines carry Bedrock's fields only (the token counts were for resuming)."""
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "_usage"}) + "\n"
                            for x in lines), encoding="utf-8")

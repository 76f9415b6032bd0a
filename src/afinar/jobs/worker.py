"""One job, run in its own process: `python -m afinar.jobs.worker JOB_ID`.

The job's kind decides what runs: a batch-inference job (jobs/batch.py), an evaluation
(jobs/evaluate.py), a knowledge-base ingestion (jobs/ingestion.py), a script-mode run
(jobs/scripts.py), or a customization job: validation -> data processing -> training ->
outputs, each phase recorded in the store. The job directory ($AFINAR_HOME/jobs/<id>) keeps
the inputs, checkpoints, logs and the run; a restarted job resumes from its last checkpoint.
SIGTERM (server shutdown) checkpoints and exits, leaving the job InProgress so the next server
start resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from afinar import db
from afinar.config import Settings, load_settings
from afinar.errors import AfinarError, DataError
from afinar.jobs.arns import short_id, slug
from afinar.jobs.states import IllegalTransition
from afinar.jobs.store import add_event, finish, job_status, set_fields, set_phase
from afinar.progress import ProgressEvent
from afinar.storage import Storage, StorageError
from afinar.training.distill import Stopped

MAX_LISTED_ERRORS = 20
# kind -> (module, function(engine, row, settings, should_stop) -> "Completed" | "Stopped",
# the note of a Completed job)
RUNNERS = {
    "batch-inference": ("afinar.jobs.batch", "run_batch",
                        "every record has its line in the output"),
    "ingestion": ("afinar.jobs.ingestion", "run_ingestion", "the data source is in sync"),
    "evaluation": ("afinar.jobs.evaluate", "run_evaluation", "report in {jobdir}/report"),
}


def run(job_id: str, settings: Settings) -> int:
    engine = db.connect(settings.db_url, run_migrations=False)
    with engine.connect() as c:
        row = c.execute(db.jobs.select().where(db.jobs.c.id == job_id)).first()
    if row is None or row.status not in ("InProgress", "Stopping"):
        return 0
    req, jobdir = row.request, settings.jobs_dir / job_id
    jobdir.mkdir(parents=True, exist_ok=True)
    state = {"shutdown": False, "last_write": 0.0, "last_event": 0.0}

    def on_term(_sig, _frm):
        state["shutdown"] = True

    signal.signal(signal.SIGTERM, on_term)

    def should_stop() -> bool:
        return state["shutdown"] or job_status(engine, job_id) == "Stopping"

    def stopped() -> int:
        if state["shutdown"]:
            add_event(engine, job_id, "server shutting down: checkpoint saved, the job resumes "
                      "when the server starts again", "WARN")
            return 0
        if row.kind == "ingestion":
            finish(engine, job_id, "Stopped", note="the documents indexed so far are kept")
            return 0
        kept = jobdir / ("run" if row.kind == "customization" else "output")
        finish(engine, job_id, "Stopped", note=f"partial results kept in {kept}")
        return 0

    try:
        if row.kind == "script":
            from afinar.jobs.scripts import execute
            execute(engine, row, settings, should_stop)  # records its own end
            return 0
        if row.kind in RUNNERS:  # kinds whose runner says Completed or Stopped
            import importlib

            module, fn, note = RUNNERS[row.kind]
            runner = getattr(importlib.import_module(module), fn)
            if runner(engine, row, settings, should_stop) == "Stopped":
                return stopped()
            finish(engine, job_id, "Completed", note=note.format(jobdir=jobdir))
            return 0
        # -- validation ----------------------------------------------------------------------
        set_phase(engine, job_id, "validationDetails", "InProgress")
        storage = Storage(settings)
        logs = req["trainingDataConfig"].get("invocationLogsConfig")
        if logs:  # distillation from the server's invocation log
            train_path = _prompts_from_logs(engine, job_id, storage, logs, jobdir)
        else:
            train_loc = storage.locate(req["trainingDataConfig"]["s3Uri"],
                                       "trainingDataConfig.s3Uri")
            train_path = storage.fetch(train_loc, jobdir / "inputs", "trainingDataConfig.s3Uri")
        valid_path = None
        for v in (req.get("validationDataConfig") or {}).get("validators") or []:
            loc = storage.locate(v["s3Uri"], "validationDataConfig.validators[0].s3Uri")
            valid_path = storage.fetch(loc, jobdir / "inputs" / "validation",
                                       "validationDataConfig.validators[0].s3Uri")
        from afinar.jobs.service import (
            DISTILLATION,
            RFT,
            JobService,
            distillation_settings,
            rft_settings,
        )
        from afinar.training.config import parse_train_config, request_hyperparameters

        cpt = row.customization_type == "CONTINUED_PRE_TRAINING"
        values = {"checkpoint_every": 20}
        values.update(request_hyperparameters(req.get("hyperParameters") or {}))
        if req.get("_internal"):  # set by afinar's own callers (the OpenAI API)
            values.update(req["_internal"])
        elif row.customization_type == RFT:
            values.update(rft_settings(req, settings))
        elif row.customization_type == DISTILLATION:
            ident = req["customizationConfig"]["distillationConfig"]["teacherModelConfig"][
                "teacherModelIdentifier"]
            teacher = JobService(settings, engine).resolve_teacher(ident)
            values.update(distillation_settings(req, teacher))
            add_event(engine, job_id, f"teacher: {ident}" + (
                f" ({teacher})" if teacher != ident else ""))
        elif cpt or values.get("type") not in ("sft", "classify", "dpo"):
            values["type"] = "cpt" if cpt else "sft"
        if values["type"] == "rft":  # prompts: checked (with the grader) as they are prepared
            add_event(engine, job_id, "training data: prompts, checked with the grader when "
                      "prepared")
        elif values["type"] == "distill":  # prompts: checked before the teacher is loaded
            add_event(engine, job_id, "training data: prompts, checked before the teacher "
                      "answers them")
        else:
            _validate_data(engine, job_id, train_path, "training", values["type"])
            if valid_path:
                _validate_data(engine, job_id, valid_path, "validation", values["type"])
        set_phase(engine, job_id, "validationDetails", "Completed")
        if should_stop():
            return stopped()

        # -- data processing -------------------------------------------------------------------
        set_phase(engine, job_id, "dataProcessingDetails", "InProgress")
        from afinar.training.metrics import describe_validation
        from afinar.training.trainer import Trainer

        values.update(train_data=str(train_path),
                      base_model=row.base_model,
                      output_dir=str(jobdir / "run"), name=row.output_model_name)
        if valid_path:
            values["validation_data"] = str(valid_path)
        cfg = parse_train_config(values, source="hyperParameters")

        def progress(ev: ProgressEvent) -> None:
            now = time.time()
            if ev.stage == "train" and ev.metrics and now - state["last_write"] > 2:
                state["last_write"] = now
                set_fields(engine, job_id, training_metrics={
                    "trainingLoss": round(float(ev.metrics["loss"]), 6)})
            if ev.stage == "train" and ev.metrics and (now - state["last_event"] > 10
                                                    or ev.current == ev.total):
                state["last_event"] = now
                m = ev.metrics
                acc = (f"reward accuracy {m.get('acc', 0):.3f} margin {m['margin']:.3f}"
                       if "margin" in m else f"mean reward {m['mean_reward']:.3f}"
                       if "mean_reward" in m else f"token accuracy {m.get('acc', 0):.3f}")
                add_event(engine, job_id, f"step {ev.current}/{ev.total} loss "
                          f"{ev.metrics['loss']:.4f} {acc} "
                          f"{ev.metrics.get('tok/s', 0)} tokens/s")
            elif ev.stage == "validate" and ev.metrics:
                add_event(engine, job_id, f"validation at step {ev.current}: "
                          f"{describe_validation(ev.metrics)}")
            elif ev.stage not in ("train", "validate", "auto") and ev.total is None and (
                    ev.metrics or ev.message):
                add_event(engine, job_id, f"{ev.stage}: {ev.message or ev.metrics}")

        resume = (jobdir / "run" / "checkpoints").exists() and any(
            (jobdir / "run" / "checkpoints").glob("step-*"))
        trainer = Trainer(cfg, settings, progress, should_stop).prepare(resume=resume)
        add_event(engine, job_id, f"data ready: {len(trainer.train.encoded)} training examples"
                  + (f", {len(trainer.valid.encoded)} validation" if trainer.valid else "")
                  + (f"; resuming from {trainer.resume_from.name}" if trainer.resume_from
                     else "") + f"; {trainer.total_steps} steps")
        if trainer.auto:
            from afinar.training.auto import describe
            add_event(engine, job_id, describe(trainer.auto))
        for w in trainer.warnings:
            add_event(engine, job_id, w, "WARN")
        set_phase(engine, job_id, "dataProcessingDetails", "Completed")

        # -- training --------------------------------------------------------------------------
        set_phase(engine, job_id, "trainingDetails", "InProgress")
        seen = len(trainer.warnings)
        res = trainer.fit()
        for w in res.warnings[seen:]:  # early stopping, the best step's weights kept
            add_event(engine, job_id, w)
        if res.status == "stopped":
            return stopped()
        metrics = {"trainingLoss": round(float(res.train_loss), 6)} \
            if res.train_loss is not None else None
        vmetrics = [{"validationLoss": round(float(res.validation["validation_loss"]), 6)}] \
            if res.validation else None

        # -- outputs ---------------------------------------------------------------------------
        out_loc = storage.locate(req["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
        written = _publish(storage, jobdir / "run", out_loc, job_id, cfg.method)
        add_event(engine, job_id, f"wrote {len(written)} files to "
                  f"{req['outputDataConfig']['s3Uri'].rstrip('/')}/model-customization-job-"
                  f"{job_id}/")
        from afinar.models.registry import custom_model_record, register_custom_model
        rec = custom_model_record(settings, row.output_model_name) or {}
        base_id = row.arn.split("/")[-2].removeprefix("afinar.")
        model_arn = (f"arn:aws:bedrock:{settings.region}:{settings.account_id}:custom-model/"
                     f"afinar.{slug(base_id)}/{short_id(job_id + row.output_model_name)}")
        rec.update(arn=model_arn, base_model_id=base_id, base_model_arn=row.base_model_arn,
                   customization_type=row.customization_type, model_status="Active",
                   bedrock={"jobName": row.name, "jobArn": row.arn,
                            "hyperParameters": req.get("hyperParameters") or {},
                            "trainingDataConfig": req["trainingDataConfig"],
                            "validationDataConfig": req.get("validationDataConfig"),
                            "outputDataConfig": req["outputDataConfig"]})
        if req.get("_openai"):  # the OpenAI API's ft: names, and its checkpoint models
            rec["openai_model"] = req["_openai"]["fine_tuned_model"]
            _checkpoint_models(settings, jobdir, rec)
        register_custom_model(settings, rec)
        set_fields(engine, job_id, output_model_arn=model_arn, training_metrics=metrics,
                   validation_metrics=vmetrics)
        finish(engine, job_id, "Completed",
               note=f"custom model {row.output_model_name} is Active")
        return 0
    except Stopped:  # while the teacher answered (distillation): its answers are kept
        return stopped()
    except IllegalTransition as e:  # e.g. the job ended elsewhere while this worker ran
        add_event(engine, job_id, f"worker stopped: {e.message}", "WARN")
        return 0
    except (DataError, StorageError) as e:
        finish(engine, job_id, "Failed", failure=str(e))
        return 0
    except AfinarError as e:
        finish(engine, job_id, "Failed", failure=str(e).replace("\n  hint: ", ". Hint: "))
        return 0
    except KeyboardInterrupt:
        return stopped()
    except Exception as e:  # an unexpected error still ends the job with its reason
        import traceback
        traceback.print_exc()
        finish(engine, job_id, "Failed", failure=f"internal error: {type(e).__name__}: {e}. "
               f"The full traceback is in {jobdir / 'worker.log'}")
        return 1


def _prompts_from_logs(engine, job_id: str, storage: Storage, logs: dict, jobdir: Path
                      ) -> Path:
    """A distillation job's prompts, read from the invocation log under
    invocationLogSource.s3Uri, into <job>/inputs/invocation_prompts.jsonl."""
    from afinar.data.readers import write_jsonl
    from afinar.training.distill import prompts_from_logs

    field = "trainingDataConfig.invocationLogsConfig.invocationLogSource.s3Uri"
    src = logs["invocationLogSource"]["s3Uri"]
    files = storage.fetch_tree(storage.locate(src, field), jobdir / "inputs" / "logs", field)
    rows, skipped = prompts_from_logs(files, logs.get("requestMetadataFilters"),
                                      bool(logs.get("usePromptResponse")))
    left = "; left out: " + ", ".join(f"{n} {why}" for why, n in skipped.items()) \
        if skipped else ""
    add_event(engine, job_id, f"invocation log {src}: {len(files)} file(s), {len(rows)} "
              f"prompts{left}")
    if not rows:
        raise DataError(f"{field}: no usable invocation in {src}{left}. Turn logging on with "
                        f"PutModelInvocationLoggingConfiguration before the calls to learn from")
    path = jobdir / "inputs" / "invocation_prompts.jsonl"
    write_jsonl(path, rows)
    return path


def _checkpoint_models(settings: Settings, jobdir: Path, rec: dict) -> None:
    """Each kept checkpoint of a LoRA run as a custom model of its own (an adapter on the same
    base), named <model>-step-<N> and, for the OpenAI API, <ft name>:ckpt-step-<N>."""
    from afinar.models.registry import register_custom_model
    from afinar.training.export import export_checkpoint

    for ck in sorted((jobdir / "run" / "checkpoints").glob("step-*")):
        step = int(ck.name.split("-")[1])
        target = jobdir / "checkpoint-models" / ck.name
        if not export_checkpoint(jobdir / "run", ck, target):
            return  # full fine-tuning: checkpoints are not exported as models
        # Bedrock's custom-model ARNs end in 12 lower-case letters and digits
        arn = f"{rec['arn'].rsplit('/', 1)[0]}/{short_id(rec['arn'] + f'-step-{step}')}"
        register_custom_model(settings, rec | {
            "name": f"{rec['name']}-step-{step}", "model_dir": str(target), "arn": arn,
            "checkpoint_of": rec["name"], "step": step,
            "openai_model": f"{rec['openai_model']}:ckpt-step-{step}"})


def _validate_data(engine, job_id: str, path: Path, role: str, kind: str) -> None:
    from afinar.data.check import check_file
    from afinar.data.schema import PREFERENCE, SUPERVISED, UNLABELLED

    expected = {"cpt": UNLABELLED, "dpo": PREFERENCE}.get(kind, SUPERVISED)
    rep = check_file(path, expected_schema=expected)
    add_event(engine, job_id, f"{role} data: {rep.records} records, {rep.valid} valid, schema "
              f"{rep.schema or 'unknown'}")
    for w in rep.warnings:
        add_event(engine, job_id, f"{role} data: {w}", "WARN")
    if not rep.ok:
        lines = []
        for e in rep.errors[:MAX_LISTED_ERRORS]:
            where = ", ".join(f"{k} {e[k]}" for k in ("line", "record") if e.get(k) is not None)
            fld = f" field '{e['field']}'" if e.get("field") else ""
            loc = f"{where}{fld}".strip()
            lines.append(f"{loc}: {e['message']}" if loc else e["message"])
        more = len(rep.errors) - MAX_LISTED_ERRORS
        msg = (f"{role} data failed validation ({len(rep.errors)} problem(s)): "
               + "; ".join(lines) + (f"; ... and {more} more" if more > 0 else ""))
        if not rep.errors:
            msg = f"{role} data has no usable records"
        if any(e.get("code") == "wrong_schema" for e in rep.errors):
            if kind == "cpt":
                msg += " (CONTINUED_PRE_TRAINING takes {\"input\": text} records)"
            elif kind == "dpo":
                msg += (" (hyperParameters type dpo takes preference pairs: {\"input\", "
                        "\"preferred_output\", \"non_preferred_output\"} or {\"prompt\", "
                        "\"chosen\", \"rejected\"})")
            elif rep.schema == "preference":
                msg += " (preference pairs train with hyperParameters {\"type\": \"dpo\"})"
            else:
                msg += " (plain text records are for customizationType CONTINUED_PRE_TRAINING)"
        raise DataError(msg)


def _publish(storage: Storage, run: Path, out_loc, job_id: str, method: str) -> list[str]:
    """Bedrock's layout under the output prefix: model-customization-job-<id>/
    training_artifacts/step_wise_training_metrics.csv, validation_artifacts/..., plus afinar's
    model card, record, the teacher's answers (distillation/) and the adapter (LoRA) or model
    (full)."""
    import shutil
    import tempfile

    from afinar.storage import Location

    stage = Path(tempfile.mkdtemp(prefix="afinar-out-"))
    try:
        for name in ("training_artifacts", "validation_artifacts", "distillation",
                     "adapter" if method == "lora" else "merged"):
            if (run / name).exists():
                shutil.copytree(run / name, stage / name)
        for name in ("README.md", "afinar_model.json", "inputs.json"):
            if (run / name).exists():
                shutil.copy2(run / name, stage / name)
        prefix = f"model-customization-job-{job_id}"
        sub = Location(f"{out_loc.uri.rstrip('/')}/{prefix}",
                       out_loc.local / prefix if out_loc.local else None, out_loc.bucket,
                       f"{(out_loc.key or '').rstrip('/')}/{prefix}".lstrip("/"))
        return storage.publish(stage, sub)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def main() -> int:
    job_id = sys.argv[1]
    raw = os.environ.get("AFINAR_WORKER_SETTINGS")
    settings = Settings(**json.loads(raw)) if raw else load_settings()
    return run(job_id, settings)


if __name__ == "__main__":
    sys.exit(main())

"""Script mode: run the user's own training script under SageMaker's training contract, so
scripts written for SageMaker's `HuggingFace` estimator run unchanged.

The script gets its hyperparameters as `--name value` arguments and in `SM_HPS` (JSON) and
`SM_HP_<NAME>`; `SM_MODEL_DIR` (write the model here), `SM_OUTPUT_DATA_DIR`, `SM_OUTPUT_DIR`,
`SM_CHANNELS` and `SM_CHANNEL_<NAME>` (one folder per input channel), `SM_NUM_GPUS`,
`SM_NUM_CPUS`, `SM_CURRENT_HOST`, `SM_HOSTS`, `SM_USER_ARGS`, `SM_TRAINING_ENV`. The source
folder is copied into the job folder and the script runs there. The job folder keeps the code,
the inputs' locations, the log and `job.json` (status, exit code). What the script writes to the
model dir becomes a custom model when it is in Hugging Face format (config.json, or a PEFT
adapter_config.json).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from afinar.config import Settings
from afinar.errors import AfinarError, ConfigError

LOG_TAIL_LINES = 25
HOST = "algo-1"  # SageMaker's name for the first training host


class ScriptFailed(AfinarError):
    """The training script exited with an error."""
    exit_code = 1


@dataclass
class ScriptResult:
    name: str
    status: str  # Completed | Failed | Stopped
    exit_code: int
    job_dir: Path
    model_dir: Path
    log: Path
    seconds: float
    registered: bool
    failure_message: str | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def parse_hyperparameters(items: list[str]) -> dict:
    """`key=value` pairs; values that parse as JSON (numbers, true/false) keep their type."""
    out = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"hyperparameter '{it}' is not key=value",
                              hint="e.g. --hyperparameters epochs=3 train_batch_size=32")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _arg(v) -> str:
    return json.dumps(v) if isinstance(v, bool | dict | list) else str(v)


def _channel_dir(job_dir: Path, name: str, src: str, settings: Settings) -> Path:
    """SageMaker hands each channel over as a folder: a folder is used in place, a file gets a
    folder of its own, an s3:// URI is fetched."""
    d = job_dir / "input" / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    if src.startswith("s3://"):
        from afinar.storage import Storage
        st = Storage(settings)
        loc = st.locate(src, f"channel '{name}'")
        if loc.local is not None and loc.local.is_dir():
            return loc.local
        st.fetch(loc, d, f"channel '{name}'") if loc.remote else (
            d / loc.local.name).symlink_to(loc.local)
        return d
    p = Path(src).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"channel '{name}': {src} does not exist")
    if p.is_dir():
        return p
    link = d / p.name
    if not link.exists():
        link.symlink_to(p)
    return d


def run_script(entry_point: str, settings: Settings, *, source_dir: str | None = None,
               hyperparameters: dict | None = None, inputs: dict[str, str] | None = None,
               name: str | None = None, output_dir: str | None = None,
               stream=None) -> ScriptResult:
    """Prepare the job folder and run the script in it, in the foreground."""
    spec = prepare_script(entry_point, settings, source_dir=source_dir,
                          hyperparameters=hyperparameters, inputs=inputs, name=name,
                          output_dir=output_dir)
    return execute_script(spec, settings, stream=stream)


# hyperparameters that scripts pass to from_pretrained(): a model afinar lists (a registry id,
# its hub id, an alias, a custom model) becomes its local folder, so a script written for the
# hub runs offline on the same model
MODEL_HYPERPARAMETERS = ("model_name", "model_id", "model_name_or_path", "base_model",
                         "pretrained_model_name_or_path")


def _local_model(value, settings: Settings):
    from afinar.models.ids import canonical
    from afinar.models.registry import BUILTIN_MODELS, custom_model_record, resolve_model

    if not isinstance(value, str) or not value or Path(value).expanduser().exists():
        return value
    ident = canonical(value, settings)
    if ident in BUILTIN_MODELS or ident in settings.model_aliases or \
            custom_model_record(settings, ident) is not None:
        return resolve_model(ident, settings).path
    return value


def prepare_script(entry_point: str, settings: Settings, *, source_dir: str | None = None,
                   hyperparameters: dict | None = None, inputs: dict[str, str] | None = None,
                   name: str | None = None, output_dir: str | None = None) -> dict:
    """Check the request, copy the code, fetch the channels; the run's spec (plain JSON:
    the job system keeps it as the script job's request)."""
    src_dir = Path(source_dir).expanduser().resolve() if source_dir else \
        Path(entry_point).expanduser().resolve().parent
    script = src_dir / entry_point if source_dir else Path(entry_point).expanduser().resolve()
    if not script.is_file():
        raise ConfigError(f"training script {script} does not exist",
                          hint="--script is relative to --source-dir when that is given")
    hps = {k: _local_model(v, settings) if k in MODEL_HYPERPARAMETERS else v
           for k, v in (hyperparameters or {}).items()}
    name = name or f"{script.stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    from afinar.models.registry import custom_model_record
    if custom_model_record(settings, name) is not None:
        raise ConfigError(f"a custom model named '{name}' already exists",
                          hint="pass another --name")
    job_dir = (Path(output_dir).expanduser() if output_dir else settings.runs_dir / name
               ).resolve()
    if job_dir.exists() and any(job_dir.iterdir()):
        raise ConfigError(f"output folder {job_dir} is not empty", hint="pass another --name "
                          "or --output-dir")
    code = job_dir / "code"
    shutil.copytree(src_dir, code, ignore=shutil.ignore_patterns(
        "__pycache__", ".git", "*.pyc", ".venv"))
    model_dir, out_dir = job_dir / "model", job_dir / "output"
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    channels = {k: _channel_dir(job_dir, k, v, settings) for k, v in (inputs or {}).items()}

    import torch  # SM_NUM_GPUS: what the script will see
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    user_args = [x for k, v in hps.items() for x in (f"--{k}", _arg(v))]
    env = {
        "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(out_dir / "data"),
        "SM_OUTPUT_DIR": str(out_dir), "SM_INPUT_DIR": str(job_dir / "input"),
        "SM_INPUT_DATA_DIR": str(job_dir / "input" / "data"),
        "SM_CHANNELS": json.dumps(sorted(channels)), "SM_HPS": json.dumps(hps),
        "SM_NUM_GPUS": str(n_gpus), "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_CURRENT_HOST": HOST, "SM_HOSTS": json.dumps([HOST]),
        "SM_MODULE_DIR": str(code), "SM_USER_ENTRY_POINT": script.name,
        "SM_USER_ARGS": json.dumps(user_args), "SM_LOG_LEVEL": "20",
        "SM_TRAINING_ENV": json.dumps({
            "hyperparameters": hps, "channel_input_dirs": {k: str(v) for k, v in
                                                           channels.items()},
            "model_dir": str(model_dir), "output_data_dir": str(out_dir / "data"),
            "current_host": HOST, "hosts": [HOST], "num_gpus": n_gpus,
            "user_entry_point": script.name, "job_name": name}),
    }
    for k, v in hps.items():
        env[f"SM_HP_{k.upper()}"] = _arg(v)
    for k, v in channels.items():
        env[f"SM_CHANNEL_{k.upper()}"] = str(v)
    meta = {"name": name, "entry_point": script.name, "source_dir": str(src_dir),
            "hyperparameters": hps, "inputs": inputs or {}, "status": "InProgress",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (job_dir / "job.json").write_text(json.dumps(meta, indent=2))
    return {"name": name, "job_dir": str(job_dir), "argv": [str(code / script.name),
                                                            *user_args],
            "env": env, "meta": meta}


def execute_script(spec: dict, settings: Settings, *, stream=None,
                   should_stop=None) -> ScriptResult:
    """Run a prepared script (its log in logs/script.log, streamed to `stream`); a stop asked
    for (`should_stop`, polled each second) terminates it (status Stopped). What it wrote to
    the model dir becomes a custom model when it is a Hugging Face model."""
    import threading

    job_dir, meta, name = Path(spec["job_dir"]), dict(spec["meta"]), spec["name"]
    model_dir, code = job_dir / "model", job_dir / "code"
    hps = meta["hyperparameters"]
    log = job_dir / "logs" / "script.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stopped = threading.Event()
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, *spec["argv"]], cwd=code,
                                env={**os.environ, **spec["env"]}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

        def watch() -> None:
            while proc.poll() is None:
                if should_stop():
                    stopped.set()
                    proc.terminate()
                    return
                time.sleep(1)

        if should_stop is not None:
            threading.Thread(target=watch, daemon=True).start()
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if stream is not None:
                stream(line.decode("utf-8", "replace"))
        rc = proc.wait()
    seconds = time.time() - t0
    failure = None
    registered = False
    if stopped.is_set():
        status = "Stopped"
    elif rc != 0:
        status = "Failed"
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        failure = f"the training script exited with status {rc}; last lines of its log:\n" + \
            "\n".join(tail)
    else:
        status = "Completed"
        registered = _register(settings, name, model_dir, hps, meta)
    meta |= {"status": status, "exit_code": rc,
             "seconds": round(seconds, 1), "failure_message": failure,
             "custom_model": name if registered else None,
             "ended_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (job_dir / "job.json").write_text(json.dumps(meta, indent=2))
    return ScriptResult(name, status, rc, job_dir, model_dir, log, seconds, registered,
                        failure)


def _register(settings: Settings, name: str, model_dir: Path, hps: dict, meta: dict) -> bool:
    """A Hugging Face model (or PEFT adapter) in the model dir becomes a custom model."""
    from afinar.models.registry import register_custom_model

    cfg = model_dir / "config.json"
    adapter = model_dir / "adapter_config.json"
    if not cfg.is_file() and not adapter.is_file():
        return False
    kind = "sft"
    if cfg.is_file():
        archs = json.loads(cfg.read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in archs):
            kind = "classify"
    base = None
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
    register_custom_model(settings, {
        "name": name, "model_dir": str(model_dir), "method": "script", "type": kind,
        "base_model": base or hps.get("model_name") or hps.get("model_id"),
        "base_path": base, "lineage": [x for x in (base, name) if x],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hyperparameters": hps, "metrics": {},
        "script": {"entry_point": meta["entry_point"], "source_dir": meta["source_dir"]},
        "artifacts": {"model": str(model_dir)}})
    return True

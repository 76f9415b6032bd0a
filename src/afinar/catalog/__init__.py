"""The recipe catalog (JumpStart-style): ready-made customizations shipped as YAML files, each
with a base model, a customization type, hyperparameters, a data format with a sample dataset,
and the evaluation to run. `afinar catalog run NAME` does the whole job on the sample data (or
the user's, `--data`); the server lists the same recipes and `run` creates a job.
"""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from afinar.config import Settings
from afinar.errors import ConfigError, NotFound
from afinar.progress import ProgressCallback, null_progress

RECIPES_DIR = Path(__file__).with_name("recipes")


class RecipeData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    sample: str
    train_examples: int | None = Field(None, ge=1)
    eval_examples: int | None = Field(None, ge=1)


class RecipeTiny(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_examples: int | None = None
    eval_examples: int | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    title: str
    description: str
    type: Literal["sft", "cpt", "classify", "rag"]
    base_model: str | None = None
    embedding_model: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    chunking: dict | None = None
    data: RecipeData
    evaluation: dict
    tiny: RecipeTiny | None = None

    def bedrock_type(self) -> str:
        return {"sft": "FINE_TUNING", "classify": "FINE_TUNING",
                "cpt": "CONTINUED_PRE_TRAINING"}.get(self.type, "")

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "type": self.type,
                "base_model": self.base_model or self.embedding_model,
                "description": " ".join(self.description.split())}


def parse_recipe(path: Path) -> Recipe:
    """Validate a recipe file: its fields, its hyperparameters (as `afinar train` would), its
    chunking, and that its sample generator exists."""
    from afinar.catalog import samples

    try:
        r = Recipe.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"recipe {path}: {msgs}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: invalid YAML: {e}") from None
    if r.name != path.stem:
        raise ConfigError(f"recipe {path}: name '{r.name}' must match the file name")
    if r.type == "rag":
        from afinar.rag.kb import validate_chunking
        validate_chunking(r.chunking)
        if r.data.sample != "kb_folder":
            raise ConfigError(f"recipe {path}: a rag recipe's sample is a folder (kb_folder)")
    else:
        from afinar.training.config import parse_train_config
        for hp in [r.hyperparameters] + ([r.hyperparameters | r.tiny.hyperparameters]
                                         if r.tiny else []):
            parse_train_config(hp | {"type": r.type, "train_data": "x.jsonl",
                                     "base_model": r.base_model or "x"},
                               source=f"recipe {path.name}")
        if r.data.sample not in samples.GENERATORS:
            raise ConfigError(f"recipe {path}: unknown sample generator '{r.data.sample}'; "
                              f"known: {', '.join(samples.GENERATORS)}")
    return r


@cache
def load_catalog(directory: Path = RECIPES_DIR) -> dict[str, Recipe]:
    return {p.stem: parse_recipe(p) for p in sorted(directory.glob("*.yaml"))}


def get_recipe(name: str) -> Recipe:
    cat = load_catalog()
    if name not in cat:
        raise NotFound(f"no recipe '{name}' in the catalog", hint=f"recipes: {', '.join(cat)}")
    return cat[name]


def sample_data(r: Recipe, dest: Path, tiny: bool = False, seed: int = 0) -> dict:
    """Write the recipe's sample data: {"train": path, "eval": path} (or a folder for rag)."""
    from afinar.catalog import samples
    from afinar.data.readers import write_jsonl

    dest.mkdir(parents=True, exist_ok=True)
    if r.type == "rag":
        folder, questions = samples.kb_folder(dest / "docs", seed)
        q = dest / "questions.jsonl"
        write_jsonl(q, questions)
        return {"docs": folder, "questions": q}
    n_train = (r.tiny.train_examples if tiny and r.tiny and r.tiny.train_examples
               else r.data.train_examples or 100)
    n_eval = (r.tiny.eval_examples if tiny and r.tiny and r.tiny.eval_examples
              else r.data.eval_examples or 20)
    rows = samples.GENERATORS[r.data.sample](n_train + n_eval, seed)
    write_jsonl(dest / "train.jsonl", rows[:n_train])
    write_jsonl(dest / "eval.jsonl", rows[n_train:])
    return {"train": dest / "train.jsonl", "eval": dest / "eval.jsonl"}


def run_recipe(r: Recipe, settings: Settings, *, data: str | None = None,
               eval_data: str | None = None, questions: str | None = None,
               base_model: str | None = None, output_dir: str | None = None,
               name: str | None = None, tiny: bool = False,
               progress: ProgressCallback = null_progress, say=lambda s: None) -> dict:
    """Prepare data, customize, evaluate; returns the report (also written to
    <output_dir>/report/)."""
    from afinar.demo import output_dir as make_output_dir

    out, stamp = make_output_dir(settings, output_dir, f"catalog-{r.name}")
    name = name or f"{r.name}-{stamp}"
    t0 = time.time()
    if r.type == "rag":
        return _run_rag(r, settings, out, name, data, questions, tiny, progress, say, t0)
    if data:
        train_path = Path(data)
        eval_path = Path(eval_data) if eval_data else None
        say(f"[1/3] Data: {train_path}" + (f", evaluation on {eval_path}" if eval_path else ""))
    else:
        paths = sample_data(r, out / "data", tiny)
        train_path, eval_path = paths["train"], paths["eval"]
        say(f"[1/3] Sample data ({r.data.sample}): {train_path}, {eval_path}")
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    base = base_model or r.base_model or settings.default_model
    hp = dict(r.hyperparameters) | (r.tiny.hyperparameters if tiny and r.tiny else {})
    cfg = parse_train_config(hp | {
        "type": r.type, "train_data": str(train_path), "base_model": base,
        "output_dir": str(out / "model"), "name": name, "checkpoint_every": 0} | (
        {"validation_data": str(eval_path)} if eval_path and r.type == "cpt" else {}),
        source=f"recipe {r.name}")
    say(f"[2/3] {r.type} of {base} -> {name}")
    result = train(cfg, settings, progress)
    report: dict = {"recipe": r.name, "type": r.type, "base_model": base, "model": name,
                    "training": {"steps": result.steps, "first_loss": result.first_loss,
                                 "final_loss": result.train_loss,
                                 "seconds": round(result.seconds, 1)}}
    if eval_path:
        from afinar.eval.compare import evaluate, write_report
        say(f"[3/3] Evaluation ({r.evaluation.get('kind')}) on {eval_path}")
        if r.type == "cpt":
            report["evaluation"] = {"initial": result.initial_validation,
                                    "final": result.validation}
        else:
            models = [name] if r.type == "classify" else [base, name]
            ev = evaluate(models, str(eval_path), settings, progress=progress)
            report["evaluation"] = ev
            write_report(ev, out / "report", f"afinar catalog: {r.title}",
                         run_dirs={name: out / "model"})
    report["seconds"] = round(time.time() - t0, 1)
    report["output_dir"] = str(out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "recipe-run.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _run_rag(r, settings, out, name, data, questions, tiny, progress, say, t0) -> dict:
    from afinar.rag.evaluate import evaluate, read_questions
    from afinar.rag.kb import KnowledgeBases

    if data:
        docs, qpath = Path(data), Path(questions) if questions else None
    else:
        paths = sample_data(r, out / "data", tiny)
        docs, qpath = paths["docs"], paths["questions"]
    say(f"[1/3] Documents: {docs}")
    kbs = KnowledgeBases(settings)
    kb = kbs.create(name, r.embedding_model)
    kbs.add_source(kb["id"], "docs", str(docs), chunking_config=r.chunking)
    say(f"[2/3] Knowledge base {name}: syncing")
    job = kbs.sync(kb["id"], progress=progress)
    job.pop("_stats", None)
    report: dict = {"recipe": r.name, "type": "rag", "knowledge_base": name,
                    "ingestion": {"statistics": job["statistics"],
                                  "failure_reasons": job["failure_reasons"]}}
    if qpath:
        say(f"[3/3] Retrieval evaluation on {qpath}")
        k = int(r.evaluation.get("k", 5))
        qs = read_questions(qpath)
        report["evaluation"] = {t: {key: v for key, v in evaluate(kbs, kb["id"], qs, k, t)
                                    .items() if key != "questions"}
                                for t in ("HYBRID", "SEMANTIC")}
    report["seconds"] = round(time.time() - t0, 1)
    report["output_dir"] = str(out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "recipe-run.json").write_text(json.dumps(report, indent=2, default=str))
    return report

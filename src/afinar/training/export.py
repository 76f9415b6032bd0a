"""Write a finished run's artifacts: the LoRA adapter and a merged model in Hugging Face format
(loadable by plain transformers / peft), the tokenizer with its chat template, a model card,
and the custom-model record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import torch

from afinar.models.registry import register_custom_model
from afinar.training.metrics import describe_validation


def export_run(trainer, result, model) -> Path:
    cfg, out = trainer.cfg, trainer.out
    tok = trainer.tokenizer
    tok.padding_side = "left"  # what inference wants
    if cfg.method == "lora":
        adapter = out / "adapter"
        model.save_pretrained(str(adapter))
        _set_adapter_base(adapter, trainer.resolved.path)
        tok.save_pretrained(str(adapter))
        model_dir = adapter
        if cfg.merge:
            model_dir = _merge(trainer, adapter, out / "merged")
    else:
        model_dir = out / "merged"
        model.save_pretrained(str(model_dir))
        tok.save_pretrained(str(model_dir))
    record = {
        "name": trainer.name,
        "model_dir": str(out),
        "method": cfg.method,
        "type": cfg.type,
        "base_model": trainer.resolved.identifier if cfg.scratch_size else cfg.base_model,
        "base_path": trainer.resolved.path,
        "lineage": list(trainer.resolved.lineage) + [trainer.name],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hyperparameters": cfg.hyperparameters(),
        "auto_hyperparameters": trainer.auto,
        "data": {"train": trainer.train.summary(),
                 "validation": trainer.valid.summary() if trainer.valid else None},
        "metrics": {"train_loss": result.train_loss, "first_train_loss": result.first_loss,
                    "validation": result.validation, "steps": result.steps,
                    "initial_validation": result.initial_validation,
                    "classification": result.classification,
                    "tokens_per_second": round(result.tokens_per_second, 1),
                    "train_seconds": round(result.seconds, 1)},
        "artifacts": {"adapter": str(out / "adapter") if cfg.method == "lora" else None,
                      "merged": str(out / "merged") if (out / "merged").exists() else None},
        "precision": str(trainer.dtype).replace("torch.", ""),
    }
    (out / "afinar_model.json").write_text(json.dumps(record, indent=2, ensure_ascii=False),
                                           encoding="utf-8")
    (out / "README.md").write_text(model_card(record), encoding="utf-8")
    register_custom_model(trainer.settings, record)
    return model_dir


def _set_adapter_base(adapter: Path, base_path: str) -> None:
    p = adapter / "adapter_config.json"
    cfg = json.loads(p.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = base_path
    p.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def _merge(trainer, adapter: Path, target: Path) -> Path:
    """Merge in fp32 (a fresh fp32 base + the saved adapter), whatever the training dtype."""
    from peft import PeftModel

    from afinar.models.loading import load_causal_lm

    if trainer.cfg.type == "classify":
        from afinar.training.classify import load_classifier
        base = load_classifier(trainer.resolved.path, trainer.train.labels, torch.float32, "cpu",
                               trainer.tokenizer.pad_token_id)
    else:
        base = load_causal_lm(trainer.resolved.path, torch.float32, "cpu")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(str(target))
    trainer.tokenizer.save_pretrained(str(target))
    return target


def model_card(r: dict) -> str:
    m, d = r["metrics"], r["data"]
    val = m.get("validation") or {}
    hp = "\n".join(f"| {k} | {v} |" for k, v in r["hyperparameters"].items())
    lines = [
        f"# {r['name']}", "",
        f"Fine-tuned by afinar from `{r['base_model']}` ({r['method']}), {r['created_at']}.", "",
        f"Lineage: {' -> '.join(r['lineage'])}", "",
        "## Data", "",
        f"- train: `{d['train']['path']}`: {d['train']['examples']} examples "
        f"({d['train']['schema']}), {d['train']['tokens']:,} tokens"
        + (f" from {d['train']['documents']} documents in blocks of "
           f"{d['train']['block_size']}" if d['train'].get('documents') else ""),
    ]
    if d.get("validation"):
        v = d["validation"]
        lines.append(f"- validation: `{v['path']}`: {v['examples']} examples")
    lines += ["", "## Metrics", "",
              f"- training loss: {m['first_train_loss']:.4f} (first step) -> "
              f"{m['train_loss']:.4f} (last step), {m['steps']} steps"]
    if m.get("classification"):
        c = m["classification"]
        lines.append(f"- validation accuracy {c['accuracy']:.3f}, macro-F1 {c['macro_f1']:.3f} "
                     f"(majority class {c['majority_baseline']:.3f}), labels {c['labels']}")
    if m.get("initial_validation"):
        iv = m["initial_validation"]
        lines.append(f"- held-out perplexity before training {iv['perplexity']:.3f} "
                     f"(loss {iv['validation_loss']:.4f})")
    if val:
        lines.append(f"- {describe_validation(val)}")
    lines += [f"- throughput: {m['tokens_per_second']} tokens/s, {m['train_seconds']} s", "",
              "## Hyperparameters", "", "| name | value |", "|---|---|", hp, "",
              "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained('{r['artifacts']['merged'] or ''}')",
              "```", ""]
    return "\n".join(lines)


def export_checkpoint(run: Path, ckpt: Path, target: Path) -> bool:
    """A LoRA run's checkpoint as a PEFT adapter folder (target/adapter: the run's adapter
    config and tokenizer, the checkpoint's weights under PEFT's saved names). False for a run
    without an adapter (full fine-tuning)."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").exists():
        return False
    out = target / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    for f in adapter.iterdir():
        if f.is_file() and f.name != "adapter_model.safetensors":
            shutil.copy2(f, out / f.name)
    weights = load_file(str(ckpt / "trainable.safetensors"))
    save_file({k.replace(".default.", "."): v for k, v in weights.items()},
              str(out / "adapter_model.safetensors"))
    return True

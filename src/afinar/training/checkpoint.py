"""Checkpoints: trainable weights, optimizer, scheduler, RNG and data position, so a resumed
run continues the same run (same batches, same dropout masks, same schedule)."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from afinar.errors import CheckpointError

STATE = "trainer_state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
            if p.requires_grad}


def save_checkpoint(ckpt_root: Path, step: int, epoch: int, batch_in_epoch: int,
                    weights: dict[str, torch.Tensor], optimizer_state: dict, scheduler,
                    fingerprint: dict, keep: int = 2) -> Path:
    """`weights`: the trainable tensors by name; `optimizer_state`: a state dict (both complete,
    also under FSDP, where the trainer gathers them first)."""
    d = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".step-{step:06d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "optim.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, "epoch": epoch,
                                         "batch_in_epoch": batch_in_epoch,
                                         "fingerprint": fingerprint}, indent=2),
                             encoding="utf-8")
    shutil.rmtree(d, ignore_errors=True)
    tmp.replace(d)
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in sorted(ckpt_root.glob("step-*")) if (p / STATE).exists()]
    return done[-1] if done else None


def load_checkpoint(d: Path, trainer, fingerprint: dict) -> dict:
    """Restore weights, optimizer, scheduler and RNG into `trainer`; returns the position."""
    state = json.loads((d / STATE).read_text(encoding="utf-8"))
    if state["fingerprint"] != fingerprint:
        diff = {k: (state["fingerprint"].get(k), v) for k, v in fingerprint.items()
                if state["fingerprint"].get(k) != v}
        raise CheckpointError(
            f"checkpoint {d} belongs to a run with other settings: {diff} (checkpoint, now)",
            hint="resume with the original settings, or start a new run in another output dir")
    weights = load_file(str(d / "trainable.safetensors"))
    # weights_only: a checkpoint folder is data; a planted pickle must not run code here
    try:
        blob = torch.load(d / "optim.pt", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{d / 'optim.pt'} holds objects other than tensors and plain "
                              f"values: {str(e).splitlines()[0]}",
                              hint="it was not written by afinar; remove the checkpoint") from None
    trainer.load_state(weights, blob["optimizer"])
    trainer.scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return state

"""Metrics files in Bedrock's output layout, plus a JSONL log with everything."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

TRAIN_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALID_CSV = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
LOG = "training_artifacts/training_log.jsonl"


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def describe_validation(v: dict) -> str:
    """One line for a validation result: loss and what else it measured."""
    if "mean_reward" in v:  # reinforcement fine-tuning: greedy answers, graded
        return f"validation mean reward {v['mean_reward']:.4f}"
    if "reward_accuracy" in v:  # preference pairs
        return (f"validation loss {v['validation_loss']:.4f}, reward accuracy "
                f"{v['reward_accuracy']:.3f}, reward margin {v['reward_margin']:.3f}")
    return (f"validation loss {v['validation_loss']:.4f}, perplexity {v['perplexity']:.3f}, "
            f"token accuracy {v['token_accuracy']:.3f}" + (
                f", exact match on a sample {v['validation_exact_match']:.0%}"
                if "validation_exact_match" in v else ""))


class MetricsWriter:
    def __init__(self, out: Path, resume_step: int | None = None):
        self.out = out
        self.train_csv = out / TRAIN_CSV
        self.valid_csv = out / VALID_CSV
        self.log = out / LOG
        for p in (self.train_csv, self.valid_csv, self.log):
            p.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._start(self.train_csv, ["step_number", "epoch_number", "training_loss",
                                         "perplexity"])
            self._start(self.valid_csv, ["step_number", "epoch_number", "validation_loss",
                                         "perplexity"])
            self.log.write_text("", encoding="utf-8")
        else:  # drop rows written after the checkpoint we resume from
            self._truncate_csv(self.train_csv, resume_step)
            self._truncate_csv(self.valid_csv, resume_step)
            self._truncate_log(resume_step)

    @staticmethod
    def _start(p: Path, header: list[str]) -> None:
        with p.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(header)

    @staticmethod
    def _truncate_csv(p: Path, step: int) -> None:
        rows = list(csv.reader(p.open(encoding="utf-8")))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) < step]
        with p.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(keep)

    def _truncate_log(self, step: int) -> None:
        lines = [ln for ln in self.log.read_text(encoding="utf-8").splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", -1) < step]
        self.log.write_text("".join(x + "\n" for x in keep), encoding="utf-8")

    def train(self, step: int, epoch: int, loss: float, **extra: float) -> None:
        with self.train_csv.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([step, epoch, f"{loss:.6f}", f"{perplexity(loss):.6f}"])
        self._log({"kind": "train", "step": step, "epoch": epoch, "loss": loss, **extra})

    def validation(self, step: int, epoch: int, loss: float, **extra: float) -> None:
        with self.valid_csv.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([step, epoch, f"{loss:.6f}", f"{perplexity(loss):.6f}"])
        self._log({"kind": "validation", "step": step, "epoch": epoch, "loss": loss, **extra})

    def _log(self, rec: dict) -> None:
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec | {"time": round(time.time(), 3)}) + "\n")


def read_training_csv(out: Path) -> list[dict]:
    with (out / TRAIN_CSV).open(encoding="utf-8") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]

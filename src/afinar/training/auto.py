"""`auto` hyperparameters: the settings a run does not give, chosen from its data and model.

Every setting named here may be given explicitly (CLI flag, YAML, Bedrock's epochCount /
batchSize / learningRate); only the ones left at "auto" (the default, or the word) are chosen, and each choice comes with its reason, which the run prints and
records (inputs.json, the job's events, the model's metadata).

The rules were derived from the task suite in benchmarks/defaults_suite.py (six tasks that are not
the demo, 400 examples each, SmolLM2-135M) — see benchmarks/README.md for the measurements — and
extended to other data and model sizes by the usual scaling practice, which is stated with each
rule below.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from afinar.training.config import AUTO_FIELDS, TrainConfig

# The optimizer steps a fine-tune of a small data set gets at least. Measured on the suite
# (360 training examples, batches of 8, lr 1e-3): 90 steps (2 epochs) gave shipping_api 35.0%
# and chat_memory 70.0% exact match, 135 steps (3 epochs) 35.0% and 66.7% in 1.5x the time.
TARGET_STEPS = 90
MAX_AUTO_EPOCHS = 5
# LoRA learning rate for a ~135M-parameter model, measured on the suite: 2e-3 lost most of what
# the model knew that a task needs (shipping_api: 35.0% exact match at 1e-3, 6.7% at 2e-3);
# scaled by sqrt(135M / parameters) for bigger models: 1.4e-4 at 7B, the usual LoRA range there.
LORA_LR_SMALL = 1e-3
LORA_LR_REF_PARAMS = 135e6
LORA_LR_MIN = 5e-5
LORA_LR_UNKNOWN = 2e-4  # a model whose size its config does not say: a large model's rate
FULL_LR = 2e-5
LORA_RANK = 16
# Long examples: at most this many tokens per batch (activation memory grows with it), so the
# batch shrinks by powers of two; the suite's and the demo's examples (60-500 tokens) keep 8.
BATCH_TOKENS = 8192


@dataclass
class DataStats:
    examples: int  # training examples after any hold-out
    mean_tokens: float
    processes: int = 1
    validated: bool = False  # validation data or a hold-out: the best weights can be kept


def model_parameters(model_dir: str | Path) -> int | None:
    """The parameter count of a transformers model directory, estimated from its config.json
    (embeddings + per-layer attention and MLP); None when the config does not say."""
    try:
        c = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    c = c.get("text_config", c)
    h, n = c.get("hidden_size"), c.get("num_hidden_layers")
    if not h or not n:
        return None
    heads = c.get("num_attention_heads") or 1
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inter = c.get("intermediate_size") or 4 * h
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    emb = (c.get("vocab_size") or 0) * h * (1 if c.get("tie_word_embeddings", True) else 2)
    return int(n * (attn + mlp) + emb)


def resolve(cfg: TrainConfig, stats: DataStats, params: int | None
            ) -> tuple[TrainConfig, dict[str, dict]]:
    """The config with every "auto" setting chosen, and {setting: {value, reason}} for them."""
    chosen: dict[str, dict] = {}

    def pick(field: str, value, reason: str):
        chosen[field] = {"value": value, "reason": reason}

    auto = {f for f in AUTO_FIELDS if getattr(cfg, f) == "auto"}
    if not auto:
        return cfg, chosen
    n = stats.examples
    if "batch_size" in auto:
        if cfg.type == "cpt":
            pick("batch_size", 8, "continued pre-training: 8 blocks per step")
        elif n >= 20000:
            pick("batch_size", 32, f"{n} examples: 32 per step keeps an epoch under "
                 f"{math.ceil(n / 32)} steps")
        elif n >= 4000:
            pick("batch_size", 16, f"{n} examples: 16 per step")
        else:
            pick("batch_size", 8, f"{n} examples: 8 per step (small data: more steps of "
                 f"fewer examples)")
        bs = chosen["batch_size"]["value"]
        if bs * stats.mean_tokens > BATCH_TOKENS:
            fit = max(1, 2 ** int(math.log2(max(BATCH_TOKENS / stats.mean_tokens, 1))))
            pick("batch_size", fit, chosen["batch_size"]["reason"] + f", {fit} for examples "
                 f"of {stats.mean_tokens:.0f} tokens on average (at most ~{BATCH_TOKENS} tokens "
                 f"per batch)")
    bs = chosen["batch_size"]["value"] if "batch_size" in chosen else cfg.batch_size
    per_epoch = max(1, math.ceil(n / (bs * stats.processes * cfg.grad_accum)))
    if "epochs" in auto:
        if cfg.type == "cpt":
            pick("epochs", 1, "continued pre-training: one pass over the corpus")
        elif cfg.type == "rft":
            pick("epochs", 1, f"reinforcement fine-tuning: one pass over the prompts, each "
                 f"answered {cfg.samples_per_prompt} times")
        else:
            e = max(1, min(MAX_AUTO_EPOCHS, math.ceil(TARGET_STEPS / per_epoch)))
            why = (f"{per_epoch} steps per epoch; {e} epoch(s) give at least "
                   f"{TARGET_STEPS} steps" if e < MAX_AUTO_EPOCHS else
                   f"{per_epoch} steps per epoch; at most {MAX_AUTO_EPOCHS} epochs")
            if e == 1:
                why = f"{per_epoch} steps in one epoch are enough (>= {TARGET_STEPS})"
            pick("epochs", e, why + ("; the best validation's weights are kept"
                                     if cfg.keep_best and stats.validated and e > 1
                                     else ""))
    if "learning_rate" in auto:
        if cfg.method == "full":
            pick("learning_rate", FULL_LR, "full fine-tuning: 2e-5")
        elif params is None:
            pick("learning_rate", LORA_LR_UNKNOWN, f"model size unknown: {LORA_LR_UNKNOWN:g}")
        else:
            lr = max(LORA_LR_MIN, min(LORA_LR_SMALL,
                                      LORA_LR_SMALL * math.sqrt(LORA_LR_REF_PARAMS / params)))
            lr = float(f"{lr:.2g}")
            pick("learning_rate", lr, f"LoRA on a {params / 1e6:,.0f}M-parameter model: "
                 f"{LORA_LR_SMALL:g} x sqrt(135M / parameters), at most {LORA_LR_SMALL:g}")
    if "learning_rate" in chosen and cfg.learning_rate_multiplier != 1:
        m = cfg.learning_rate_multiplier
        c = chosen["learning_rate"]
        pick("learning_rate", float(f"{c['value'] * m:.3g}"),
             f"{c['reason']}; x {m:g} (learning_rate_multiplier)")
    if cfg.method != "lora":
        auto -= {"lora_r", "lora_alpha", "lora_layers"}
    if "lora_r" in auto:
        pick("lora_r", LORA_RANK, f"rank {LORA_RANK}")
    r = chosen["lora_r"]["value"] if "lora_r" in chosen else cfg.lora_r
    if "lora_alpha" in auto:
        pick("lora_alpha", 2 * r, "2 x rank")
    if "lora_layers" in auto:
        pick("lora_layers", None, "every layer")
    return cfg.model_copy(update={k: v["value"] for k, v in chosen.items()}), chosen


def describe(chosen: dict[str, dict]) -> str:
    return "auto hyperparameters: " + "; ".join(
        f"{k} {'all' if v['value'] is None else v['value']} ({v['reason']})"
        for k, v in chosen.items())

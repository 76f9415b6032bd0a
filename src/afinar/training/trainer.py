"""The training loop: LoRA or full fine-tuning of a causal LM, on one process or several
(DDP under `accelerate launch` / `torchrun`, through accelerate).

Written as a plain loop rather than on transformers' Trainer / TRL's SFTTrainer because it was
measured faster here (benchmarks/train_throughput.py): loss on labelled positions only,
length-grouped batches without padding masks where possible, no per-step overheads; and it keeps
resume exact (data order is a pure function of seed and epoch).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from afinar.config import Settings
from afinar.data.corpus import Corpus, prepare_corpus
from afinar.errors import CheckpointError, TrainingError
from afinar.models.loading import load_causal_lm, load_tokenizer
from afinar.models.registry import ResolvedModel, resolve_model
from afinar.progress import ProgressCallback, ProgressEvent, null_progress
from afinar.runtime import choose_device, choose_dtype, set_threads
from afinar.training import checkpoint as ckpt
from afinar.training.batching import collate, collate_packed, epoch_batches, left_pad
from afinar.training.config import TrainConfig
from afinar.training.data import PreparedData, prepare
from afinar.training.loss import SelectiveLMLoss
from afinar.training.metrics import MetricsWriter, perplexity

HOLD_OUT_MIN_EXAMPLES = 100  # fewer: every example is needed for training
HOLD_OUT_MAX = 200
GEN_SAMPLE = 16  # validation examples answered by generation when answers are short
SAMPLE_ANSWER_TOKENS = 96


@dataclass
class TrainResult:
    name: str
    output_dir: Path
    status: str  # completed | stopped
    steps: int
    total_steps: int
    train_loss: float | None
    first_loss: float | None
    validation: dict | None
    tokens_per_second: float
    seconds: float
    model_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    initial_validation: dict | None = None  # cpt: held-out metrics before training
    classification: dict | None = None  # classify: accuracy, macro-F1, confusion matrix
    best_step: int | None = None  # the step whose weights were kept (keep_best)
    early_stopped: bool = False
    auto: dict = field(default_factory=dict)  # the "auto" settings chosen: {name: {value, reason}}
    distillation: dict | None = None  # distill: per role, the teacher's answers and left-outs


class _Best:
    """The best validation so far (the highest sample exact match where answers are JSON, then
    the lowest loss): its weights (keep_best; a copy of the trainable tensors on the CPU: the
    adapter for LoRA), and the count of validations that did not lower the best loss by more
    than early_stopping_threshold (early_stopping_patience)."""

    def __init__(self, cfg: TrainConfig, fsdp: bool):
        self.cfg, self.keep = cfg, cfg.keep_best and not fsdp  # FSDP: shards; not kept
        self.loss: float | None = None
        self.step: int | None = None
        self.val: dict | None = None
        self.state: dict | None = None
        self.score: tuple = ()
        self.lowest: float | None = None  # the lowest validation loss (early stopping)
        self.bad = 0
        self.kept = False

    def consider(self, val: dict | None, step: int, trainer) -> bool:
        """Record a validation; True when early stopping says stop."""
        if val is None:
            return False
        loss = val["validation_loss"]
        if self.lowest is None or loss < self.lowest - self.cfg.early_stopping_threshold:
            self.bad = 0
        else:
            self.bad += 1
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        score = (val.get("validation_exact_match", 0.0), -loss)  # exact match first, if any
        if self.loss is None or score > self.score:
            self.loss, self.step, self.val, self.score = loss, step, val, score
            if self.keep:  # a copy: on the CPU trainable_state's tensors are the live ones
                self.state = {k: v.clone() for k, v in trainer.trainable_state().items()}
        return bool(self.cfg.early_stopping_patience) and \
            self.bad >= self.cfg.early_stopping_patience

    def restore(self, step: int, trainer) -> bool:
        """Put the best weights back when they are not the last step's."""
        if not self.keep or self.state is None or self.step == step:
            return False
        model = trainer.accel.unwrap_model(trainer.loss_mod).model
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.state.items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))
        self.kept = True
        return True


def default_name(cfg: TrainConfig) -> str:
    """<data file stem>-<UTC time>, kept to the characters and length NAME_PATTERN allows."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(cfg.train_data).stem).strip("-._")[:40]
    return f"{stem or 'model'}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, resolved: ResolvedModel, dtype: torch.dtype, device: str,
                labels: list[str] | None = None, pad_token_id: int | None = None):
    # LoRA: frozen base in the compute dtype, adapters fp32 (PEFT's autocast_adapter_dtype).
    # Full: fp32 master weights; bf16 compute comes from autocast.
    base_dtype = dtype if cfg.method == "lora" else torch.float32
    if cfg.type == "classify":
        from afinar.training.classify import load_classifier
        model = load_classifier(resolved.path, labels, base_dtype, device, pad_token_id)
    elif cfg.quantize == "4bit":
        model = _load_4bit(resolved, dtype, device)
    else:
        model = load_causal_lm(resolved.path, base_dtype, device)
    if resolved.adapter_path and resolved.kind == "adapter":
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, resolved.adapter_path).merge_and_unload()
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model
        targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [
            t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
        extra = {}
        if cfg.lora_layers:
            n_layers = model.config.num_hidden_layers
            if targets == "all-linear":  # PEFT needs explicit names with layers_to_transform
                targets = _linear_names(model)
            extra["layers_to_transform"] = list(range(max(0, n_layers - cfg.lora_layers),
                                                      n_layers))
        try:
            # SEQ_CLS also trains (and saves) the new classification head in full
            model = get_peft_model(model, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                task_type="SEQ_CLS" if cfg.type == "classify" else "CAUSAL_LM", **extra))
        except ValueError as e:
            raise TrainingError(f"cannot apply LoRA: {e}",
                                hint="check --lora-targets against the model's module names"
                                ) from e
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def check_quantize(cfg: TrainConfig, device: str) -> None:
    """quantize=4bit needs bitsandbytes with a backend for this device: checked before any
    data is read or model loaded."""
    if cfg.quantize == "none":
        return
    try:
        import bitsandbytes
    except ImportError:
        raise TrainingError("--quantize 4bit (QLoRA) needs bitsandbytes, which is not "
                            "installed", hint="pip install 'afinar[qlora]' (or "
                            "bitsandbytes>=0.46), or train without --quantize") from None
    from packaging.version import Version

    if device not in ("cuda", "cpu"):
        raise TrainingError(f"--quantize 4bit runs on CUDA or the CPU; this run is on {device}",
                            hint="train without --quantize")
    if device == "cpu" and Version(bitsandbytes.__version__) < Version("0.46"):
        raise TrainingError(f"bitsandbytes {bitsandbytes.__version__} has no CPU backend for "
                            f"4-bit weights", hint="pip install 'bitsandbytes>=0.46', or "
                            "train without --quantize on this machine")


def _load_4bit(resolved: ResolvedModel, dtype: torch.dtype, device: str):
    """The base in 4-bit NF4 with double quantization, computing in `dtype` (QLoRA's recipe),
    prepared for training adapters on it (peft's prepare_model_for_kbit_training: norms in
    fp32, input gradients on)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if resolved.kind == "adapter":
        raise TrainingError("--quantize 4bit needs a base with full weights, not a LoRA "
                            "custom model saved without its merged model",
                            hint="export it merged (afinar export) and train on that folder")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, quantization_config=q,
                                                     dtype=dtype, device_map={"": device})
    except OSError as e:
        raise TrainingError(f"cannot load model from '{resolved.path}' in 4-bit: {e}") from e
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _no_split_modules(model) -> list[str]:
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = getattr(lm, "_no_split_modules", None) or []
    if not names:
        raise TrainingError(f"{type(lm).__name__} does not name its transformer layer class, "
                            f"so FSDP cannot shard it", hint="train without --fsdp")
    return list(names)


def _fully_shard(root: torch.nn.Module, model: torch.nn.Module) -> None:
    """FSDP2 (torch's `fully_shard`): each decoder layer is a sharding unit, the rest (embeddings,
    final norm, output layer) belongs to the root. Applied directly rather than through
    accelerate's FSDP plugin, which accelerate enables only on GPUs/accelerators; this way the
    same path runs on CPU processes (gloo), which is how the test suite exercises it."""
    from torch.distributed.fsdp import fully_shard

    names = set(_no_split_modules(model))
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingError(f"no {sorted(names)} modules found to shard",
                            hint="train without --fsdp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(root)


DEFAULT_MAX_LENGTH = 512


def _lengths(data) -> list[int]:
    return data.lengths() if isinstance(data, Corpus) else [len(e) for e in data.encoded]


def _linear_names(model) -> list[str]:
    out_emb = model.get_output_embeddings()
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not out_emb})


class Trainer:
    def __init__(self, cfg: TrainConfig, settings: Settings,
                 progress: ProgressCallback = null_progress,
                 should_stop: Callable[[], bool] | None = None):
        from accelerate import Accelerator

        self.cfg, self.settings, self.progress = cfg, settings, progress
        self.should_stop = should_stop or (lambda: False)
        self.accel = Accelerator(cpu=not torch.cuda.is_available())
        want_fsdp = cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        self.fsdp = want_fsdp and self.accel.num_processes > 1
        self.device = choose_device()  # device type, for dtype choice and autocast
        self.dtype, note = choose_dtype(cfg.precision, self.device)
        self.warnings = [note] if note else []
        set_threads(cfg.threads or settings.threads)
        self.name = cfg.name or default_name(cfg)
        self.distillation: dict = {}  # distill: role -> the teacher's answers (Distilled)
        self.sampler = None  # rft: training/rft.py's Sampler, made at the first step
        self.out = Path(cfg.output_dir or settings.runs_dir / self.name).expanduser().resolve()

    # -- set-up ----------------------------------------------------------------------------
    def _check_output_dir(self, resume: bool) -> Path | None:
        ckroot = self.out / "checkpoints"
        if resume:
            last = ckpt.latest_checkpoint(ckroot)
            if last is None:
                raise CheckpointError(f"nothing to resume in {self.out}: no checkpoint found",
                                      hint="start without --resume")
            return last
        if self.out.exists() and any(p.name not in ("STOP", "tokens", "init", "distillation")
                                     for p in self.out.iterdir()):
            raise TrainingError(f"output directory {self.out} already holds a run",
                                hint="pass --resume to continue it, or choose another "
                                     "--output-dir / --name")
        return None

    def _scratch_model(self) -> ResolvedModel:
        """A fresh random model (and tokenizer) in <run>/init, made once: a resumed run finds
        it there."""
        from afinar.training.scratch import build_initial_model, train_bpe_tokenizer

        cfg, init = self.cfg, self.out / "init"
        ident = f"scratch:{cfg.scratch_size}"
        if not (init / "config.json").exists():
            init.mkdir(parents=True, exist_ok=True)
            if cfg.tokenizer == "bpe":
                tok = train_bpe_tokenizer(cfg.train_data, cfg.vocab_size, init)
            else:
                base = resolve_model(cfg.base_model, self.settings, self.progress)
                tok = load_tokenizer(base.base if base.kind == "adapter" else base.path)
            build_initial_model(cfg, tok, init)
        return ResolvedModel(ident, "local", str(init), lineage=[ident])

    def _hold_out(self) -> None:
        """No validation data: validate on a seeded share of the training examples
        (validation_split), when there are enough of them to spare."""
        import dataclasses
        import random

        cfg, data = self.cfg, self.train
        n_all = len(data.encoded)
        if cfg.validation_split <= 0 or n_all < HOLD_OUT_MIN_EXAMPLES:
            return
        n = min(HOLD_OUT_MAX, max(5, round(n_all * cfg.validation_split)))
        idx = list(range(n_all))
        random.Random(cfg.seed * 7919 + 1).shuffle(idx)
        held = set(idx[:n])
        self.valid = dataclasses.replace(
            data, encoded=[data.encoded[i] for i in sorted(held)], warnings=[])
        self.train = dataclasses.replace(
            data, encoded=[e for i, e in enumerate(data.encoded) if i not in held])
        if len(getattr(data, "examples", ())) == n_all:  # kept aligned with the encodings
            self.valid.examples = [data.examples[i] for i in sorted(held)]
            self.train.examples = [e for i, e in enumerate(data.examples) if i not in held]
        self.warnings.append(
            f"no validation data: held out {n} of {n_all} training examples "
            f"(validation_split={cfg.validation_split}) to validate on during training"
            + (" and keep the best weights" if cfg.keep_best else ""))

    def _choose_auto(self) -> None:
        """The settings left at "auto", chosen from the data now loaded and the model's size
        (training/auto.py); recorded in inputs.json, the model's record and the result."""
        from afinar.training.auto import DataStats, describe, model_parameters, resolve

        lengths = self.lengths = _lengths(self.train)  # kept: the batching uses them too
        stats = DataStats(len(lengths), sum(lengths) / max(len(lengths), 1),
                          self.accel.num_processes, validated=self.valid is not None)
        base = self.resolved.base if self.resolved.kind == "adapter" else self.resolved.path
        self.cfg, self.auto = resolve(self.cfg, stats, model_parameters(base))
        self.auto = self.data_auto | self.auto
        if self.auto:
            self.progress(ProgressEvent("auto", 0, None, message=describe(self.auto)))

    def _fixed_auto(self) -> None:
        """The data-driven settings of the types that do not measure their data: max_length
        512, no value variants."""
        self.data_auto: dict[str, dict] = {}
        self.variant_sample: list = []  # validation examples with re-sampled values
        if self.cfg.type in ("sft", "distill"):
            return
        if self.cfg.max_length == "auto":
            self.cfg = self.cfg.model_copy(update={"max_length": DEFAULT_MAX_LENGTH})
            self.data_auto["max_length"] = {
                "value": DEFAULT_MAX_LENGTH,
                "reason": f"type {self.cfg.type}: {DEFAULT_MAX_LENGTH} tokens"}
        if self.cfg.value_variants == "auto":
            self.cfg = self.cfg.model_copy(update={"value_variants": 0})

    def _resample_values(self) -> None:
        """sft/distill: value variants of the training examples (training/variants.py)."""
        from afinar.training.variants import add_variants

        got = add_variants(self.train, self.valid, self.tokenizer, self.cfg.value_variants,
                           self.cfg.seed, self.cfg.max_length, GEN_SAMPLE)
        self.cfg = self.cfg.model_copy(update={"value_variants": got.value})
        self.augment, self.variant_sample = got.report, got.sample
        if got.reason:
            self.data_auto["value_variants"] = {"value": got.value, "reason": got.reason}
        if got.message:
            self.progress(ProgressEvent("data", 0, None, message=got.message))

    def _fit_lengths(self) -> None:
        """sft/distill: the examples were tokenized whole; max_length auto is chosen from
        them (data/length.py), then every example is fitted to it."""
        from afinar.data.length import choose_max_length, model_limits
        from afinar.training.data import fit_length

        cfg = self.cfg
        if cfg.max_length == "auto":
            lengths = [len(e) for e in self.train.encoded] + (
                [len(e) for e in self.valid.encoded] if self.valid else [])
            r = self.resolved
            context, budget = model_limits(r.base if r.kind == "adapter" else r.path,
                                           self.device)
            choice = choose_max_length(lengths, context, budget)
            self.cfg = cfg = cfg.model_copy(update={"max_length": choice.max_length})
            self.data_auto["max_length"] = {"value": choice.max_length,
                                            "reason": choice.reason}
        self.train = fit_length(self.train, cfg.max_length)
        if self.valid is not None:
            self.valid = fit_length(self.valid, cfg.max_length, role="validation")

    def prepare(self, resume: bool = False):
        self._fixed_auto()
        cfg = self.cfg
        check_quantize(cfg, self.device)
        self.resume_from = self._check_output_dir(resume)
        if cfg.type == "rft":  # a bad grader fails before the model is fetched or converted
            from afinar.eval.graders import load_grader
            self.grader = load_grader(cfg.grader)
        self.resolved = self._scratch_model() if cfg.scratch_size else resolve_model(
            cfg.base_model, self.settings, self.progress)
        tok_dir = self.resolved.base if self.resolved.kind == "adapter" else self.resolved.path
        self.tokenizer = load_tokenizer(tok_dir)
        if cfg.type != "classify":
            from afinar.data.tokenize import ensure_chat_template
            ensure_chat_template(self.tokenizer)
        # all data problems surface here, before the model is loaded or a step is taken
        self.valid: PreparedData | Corpus | None = None
        if cfg.type == "classify":
            from afinar.training.classify import prepare_classification
            self.train = prepare_classification(cfg.train_data, self.tokenizer, cfg.max_length)
            if cfg.validation_data:
                self.valid = prepare_classification(cfg.validation_data, self.tokenizer,
                                                    cfg.max_length, self.train.labels,
                                                    role="validation")
        elif cfg.type == "dpo":
            from afinar.training.preference import prepare_pairs
            self.train = prepare_pairs(cfg.train_data, self.tokenizer, cfg.max_length,
                                       cfg.skip_invalid)
            if cfg.validation_data:
                self.valid = prepare_pairs(cfg.validation_data, self.tokenizer,
                                           cfg.max_length, cfg.skip_invalid, role="validation")
        elif cfg.type == "rft":
            if self.accel.num_processes > 1:  # the GRPO step calls the unwrapped model
                raise TrainingError("reinforcement fine-tuning runs on one process for now",
                                    hint="run afinar train --type rft without torchrun / "
                                         "accelerate launch")
            from afinar.training.rft import prepare_prompts
            self.train = prepare_prompts(cfg.train_data, self.tokenizer, cfg.max_prompt_length,
                                         self.grader, cfg.max_new_tokens)
            if cfg.validation_data:
                self.valid = prepare_prompts(cfg.validation_data, self.tokenizer,
                                             cfg.max_prompt_length, self.grader,
                                             cfg.max_new_tokens, role="validation")
        elif cfg.type == "cpt":
            # streamed into token files next to the run, then read back by memory map
            tokens = self.out / "tokens"
            self.train = prepare_corpus(cfg.train_data, self.tokenizer, cfg.max_length, tokens)
            if cfg.validation_data:
                self.valid = prepare_corpus(cfg.validation_data, self.tokenizer,
                                            cfg.max_length, tokens, role="validation")
        else:  # sft; distill: on the teacher's answers
            data = self._distilled if cfg.type == "distill" else lambda path, _role: path
            self.train = prepare(data(cfg.train_data, "training"), self.tokenizer, None,
                                 cfg.skip_invalid)
            if cfg.validation_data:
                self.valid = prepare(data(cfg.validation_data, "validation"), self.tokenizer,
                                     None, cfg.skip_invalid, role="validation")
            self._fit_lengths()
            cfg = self.cfg
        if self.valid is None and cfg.type != "cpt":
            self._hold_out()
        if cfg.type in ("sft", "distill"):
            self._resample_values()
        self.gen_sample = self._structured_sample()
        self.warnings += self.train.warnings + (self.valid.warnings if self.valid else [])
        self._choose_auto()
        cfg = self.cfg
        _set_seed(cfg.seed)
        # each process places its model on its own device (cuda:<local rank> under torchrun)
        labels = getattr(self.train, "labels", None)
        self.model = build_model(cfg, self.resolved, self.dtype, str(self.accel.device),
                                 labels, self.tokenizer.pad_token_id)
        if cfg.type == "classify":
            from afinar.training.classify import ClassifierLoss, balanced_weights
            weights = balanced_weights(self.train) if cfg.class_weights == "balanced" else None
            self.loss_mod = ClassifierLoss(self.model, weights)
        elif cfg.type == "dpo":
            from afinar.training.preference import REFERENCE_FREE, PreferenceLoss
            self.loss_mod = PreferenceLoss(self.model, cfg.loss, cfg.beta, cfg.sft_weight)
            if cfg.loss not in REFERENCE_FREE:
                self._reference_logps()
        elif cfg.type == "rft":
            from afinar.training.rft import Policy
            self.loss_mod = Policy(self.model)
        else:
            self.loss_mod = SelectiveLMLoss(self.model)
        if (cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP")) and not self.fsdp:
            self.warnings.append("fsdp needs 2+ processes (torchrun / accelerate launch); "
                                 "training unsharded")
        if self.fsdp:
            # shards the parameters in place: before the optimizer sees them
            _fully_shard(self.loss_mod, self.model)
        params = [p for p in self.loss_mod.parameters() if p.requires_grad]
        self.trainable_names = [n.removeprefix("model.") for n, p in
                                self.loss_mod.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.world, self.rank = self.accel.num_processes, self.accel.process_index
        lengths = self.lengths
        # what the loss is normalised by each step, counted once: labelled tokens per example
        # (a preference pair counts once)
        if cfg.type in ("dpo", "rft"):
            self.label_counts = [1] * len(self.train.encoded)
        elif hasattr(self.train, "label_counts"):
            self.label_counts = self.train.label_counts()
        else:
            self.label_counts = [sum(1 for t in e.labels[1:] if t != -100)
                                 for e in self.train.encoded]
        n_batches = len(epoch_batches(lengths, cfg.batch_size, cfg.seed, 0, cfg.grouping,
                                      self.rank, self.world))
        if n_batches == 0:
            raise TrainingError(f"{len(lengths)} examples make no batch for {self.world} "
                                f"processes of batch size {cfg.batch_size}",
                                hint="lower --batch-size or add data")
        self.steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        from transformers import get_scheduler
        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer,
                                       num_warmup_steps=min(cfg.warmup_steps, self.total_steps),
                                       num_training_steps=self.total_steps)
        if not self.fsdp:
            self.loss_mod = self.accel.prepare(self.loss_mod)
        return self

    def _distilled(self, path: str, role: str) -> str:
        """type distill: the teacher's answers to the prompts of `path` (training/distill.py),
        asked for by the main process, kept in <run>/distillation."""
        from afinar.inference.teachers import make_teacher
        from afinar.training.distill import distil

        cfg, out = self.cfg, self.out / "distillation"
        if self.accel.is_main_process:
            res = distil(path, out, role, lambda: make_teacher(
                cfg.teacher, self.settings, cfg.max_new_tokens), self.progress,
                self.should_stop, cfg.use_prompt_response)
            self.distillation[role] = res
            self.progress(ProgressEvent("teacher", 0, None, message=res.describe(role)))
        self.accel.wait_for_everyone()
        return str(out / f"{role}_responses.jsonl")

    def _autocast(self):
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reference_logps(self) -> None:
        """Preference tuning: the starting model's log-probs of every pair's answers, once,
        before any step (training/preference.py)."""
        from afinar.training.preference import compute_reference

        sets = [self.train] + ([self.valid] if self.valid is not None else [])
        total = sum(len(d.encoded) for d in sets)
        done = 0

        def report(i: int, _n: int) -> None:
            self.progress(ProgressEvent("reference", done + i, total))

        for d in sets:
            compute_reference(self.model, d, self.tokenizer.pad_token_id,
                              self.cfg.batch_size, self.accel.device, self._autocast, report)
            done += len(d.encoded)

    def _batch(self, items, packed: bool = False) -> dict:
        if self.cfg.type == "dpo":
            from afinar.training.preference import collate_pairs
            b = collate_pairs(items, self.tokenizer.pad_token_id)
        else:
            b = collate_packed(items) if packed else collate(items, self.tokenizer.pad_token_id)
        dev = self.accel.device
        return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}

    def _forward(self, b: dict) -> tuple:
        """(summed loss, count it is normalised by, count right, *other sums) of a batch: for
        preference pairs the right count is pairs ranked right and the other sum the reward
        margin."""
        if self.cfg.type == "dpo":
            return self.loss_mod(b["input_ids"], b["labels"], b["attention_mask"],
                                 b.get("ref_logps"))
        return self.loss_mod(b["input_ids"], b["labels"], b["attention_mask"],
                             b.get("position_ids"))

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict | None:
        if self.valid is None:
            return None
        if self.cfg.type == "rft":
            return self._validate_rewards()
        self.model.eval()
        enc = self.valid.encoded
        vlen = _lengths(self.valid)
        order = sorted(range(len(enc)), key=lambda i: vlen[i])
        mine = order[self.rank::self.world]
        dpo = self.cfg.type == "dpo"
        tot = torch.zeros(4 if dpo else 3, dtype=torch.float64, device=self.accel.device)
        for s in range(0, len(mine), self.cfg.batch_size):
            b = self._batch([enc[i] for i in mine[s:s + self.cfg.batch_size]])
            with self._autocast():
                sums = self._forward(b)
            tot += torch.stack([torch.as_tensor(x, device=tot.device).double() for x in sums])
        tot = self.accel.reduce(tot, reduction="sum")
        loss = float(tot[0] / tot[1].clamp(min=1))
        if dpo:  # a preference loss has no perplexity
            out = {"validation_loss": loss, "reward_accuracy": float(tot[2] / tot[1]),
                   "reward_margin": float(tot[3] / tot[1])}
        else:
            out = {"validation_loss": loss, "perplexity": perplexity(loss),
                   "token_accuracy": float(tot[2] / tot[1].clamp(min=1))}
        if self.gen_sample:
            out["validation_exact_match"] = self._sample_exact_match()
        self.model.train()
        return out

    def _validate_rewards(self) -> dict:
        """rft: greedy answers to the validation prompts, graded; the loss column is minus
        the mean reward (lower is better, as for the other kinds)."""
        prompts = self.valid.encoded
        _, answers, _cut = self._policy_sampler().sample(prompts, 1, self.cfg.max_new_tokens,
                                                         0.0)
        texts = [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
        rewards = self.grader.grade_many(texts, [p.item for p in prompts])
        mean = sum(rewards) / len(rewards)
        return {"validation_loss": -mean, "mean_reward": mean}

    def _structured_sample(self) -> list[tuple[list[int], str]]:
        """Up to GEN_SAMPLE validation examples with short answers (JSON, tool calls, labels,
        numbers: at most SAMPLE_ANSWER_TOKENS), answered by generation at each validation:
        (prompt ids, reference text). With value variants, the held-out examples with
        re-sampled values (what the model has never seen). Empty for long free-text answers,
        or where generation during training is not cheap (several processes)."""
        from afinar.data.tokenize import IGNORE_INDEX

        if self.cfg.type not in ("sft", "distill") or self.valid is None or \
                self.accel.num_processes > 1:
            return []
        out = []
        for e in (self.variant_sample or self.valid.encoded)[:GEN_SAMPLE]:
            lab = [i for i, x in enumerate(e.labels) if x != IGNORE_INDEX]
            if not lab:
                continue
            start = lab[-1]  # the last answer: its labelled run, back to its first token
            while start - 1 in lab:
                start -= 1
            if lab[-1] + 1 - start > SAMPLE_ANSWER_TOKENS:
                return []
            ref = self.tokenizer.decode(e.input_ids[start:lab[-1] + 1],
                                        skip_special_tokens=True).strip()
            out.append((e.input_ids[:start], ref))
        return out

    def _sample_exact_match(self) -> float:
        """Greedy answers to the structured sample, exact match (JSON as values)."""
        from afinar.eval.metrics import exact_match

        tok, model = self.tokenizer, self.accel.unwrap_model(self.loss_mod).model
        n = max(len(tok(r, add_special_tokens=False)["input_ids"]) for _, r in self.gen_sample)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids, mask = left_pad([p for p, _ in self.gen_sample], pad)
        width = ids.shape[1]
        dev = self.accel.device
        with self._autocast():
            gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                 max_new_tokens=n + 8, do_sample=False, use_cache=True,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        hits = sum(exact_match(tok.decode(g[width:], skip_special_tokens=True).strip(), r)
                   for g, (_, r) in zip(gen, self.gen_sample, strict=True))
        return hits / len(self.gen_sample)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            if self.sampler is not None:  # rft: the engine that sampled from the policy
                self.sampler.close()
                self.sampler = None

    def _policy_sampler(self):
        """rft: the serving engine, serving the policy being trained (built once)."""
        if self.sampler is None:
            from afinar.training.rft import Sampler

            cfg = self.cfg
            self.sampler = Sampler(
                self.accel.unwrap_model(self.loss_mod).model, self.tokenizer, self.settings,
                max(cfg.batch_size * cfg.samples_per_prompt, cfg.batch_size),
                cfg.max_new_tokens, cfg.max_prompt_length, self._autocast, cfg.seed)
        return self.sampler

    def _fit(self) -> TrainResult:
        cfg, accel = self.cfg, self.accel
        main = accel.is_main_process
        start_step, start_epoch, start_batch = 0, 0, 0
        fp = cfg.fingerprint()
        if self.resume_from is not None:
            st = ckpt.load_checkpoint(self.resume_from, self, fp)
            start_step, start_epoch, start_batch = st["step"], st["epoch"], st["batch_in_epoch"]
        writer = MetricsWriter(self.out, start_step if self.resume_from else None) if main \
            else None
        if main:
            (self.out / "inputs.json").write_text(_json({"config": cfg.model_dump(),
                                                         "auto": self.auto,
                                                         "value_variants": getattr(
                                                             self, "augment", None),
                                                         "train": self.train.summary(),
                                                         "validation": self.valid.summary()
                                                         if self.valid else None}))
        lengths = self.lengths
        step, t0, tokens, first_loss, last_loss = start_step, time.time(), 0, None, None
        last_val, status = None, "completed"
        best, early, validated_at = _Best(cfg, self.fsdp), False, None
        epoch, b = start_epoch, start_batch
        initial_val = None
        if cfg.type == "cpt" and self.valid is not None and self.resume_from is None:
            # held-out perplexity of the untouched model: the curve's first point
            initial_val = self._validate_and_log(writer, 0, 0)
        self.model.train()
        self.progress(ProgressEvent("train", step, self.total_steps))
        try:
            for epoch in range(start_epoch, cfg.epochs):
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.grouping,
                                        self.rank, self.world)
                b = start_batch if epoch == start_epoch else 0
                while b < len(batches) and step < self.total_steps:
                    group = batches[b:b + cfg.grad_accum]
                    loss, acc, ntok = self._step(group)
                    b += len(group)
                    tokens += ntok
                    if not math.isfinite(loss):
                        raise TrainingError(f"loss became {loss} at step {step}",
                                            hint="lower --learning-rate; the checkpoints "
                                                 "and logs so far are kept")
                    first_loss = loss if first_loss is None else first_loss
                    last_loss = loss
                    rate = tokens * self.world / max(time.time() - t0, 1e-9)
                    if writer:
                        writer.train(step, epoch, loss, **self.step_metrics,
                                     learning_rate=self.scheduler.get_last_lr()[0],
                                     tokens_per_second=rate)
                    step += 1
                    shown = {"acc": acc} if cfg.type != "rft" else {
                        k: v for k, v in self.step_metrics.items() if k in ("mean_reward", "kl")}
                    if cfg.type == "dpo":
                        shown["margin"] = self.step_metrics["reward_margin"]
                    self.progress(ProgressEvent("train", step, self.total_steps, {
                        "loss": loss, **shown, "tok/s": round(rate), "epoch": epoch}))
                    at_ckpt = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                    if (cfg.eval_every and step % cfg.eval_every == 0) or (
                            at_ckpt and not cfg.eval_every):
                        last_val = self._validate_and_log(writer, step, epoch)
                        if best.consider(last_val, step, self):
                            early, validated_at = True, step
                    stop = self._agree_stop() or early
                    if at_ckpt or stop:
                        self._save(step, epoch, b)
                    if stop:
                        status = "completed" if early else "stopped"
                        break
                if early or status == "stopped" or step >= self.total_steps:
                    break
        except KeyboardInterrupt:
            self._save(step, epoch, b)
            raise
        if status == "completed":
            if validated_at != step:
                last_val = self._validate_and_log(writer, step, epoch) if self.valid else None
                best.consider(last_val, step, self)
            if not early:
                self._save(step, epoch, b)
            if early:
                self.warnings.append(
                    f"early stopping at step {step}: {cfg.early_stopping_patience} "
                    f"validation(s) without improving the best loss by more than "
                    f"{cfg.early_stopping_threshold}")
            if best.restore(step, self):
                self.warnings.append(
                    f"kept the weights of step {best.step} (validation loss "
                    f"{best.loss:.4f}) rather than the last step's "
                    f"({last_val['validation_loss']:.4f})")
                last_val = best.val
        secs = time.time() - t0
        res = TrainResult(self.name, self.out, status, step, self.total_steps, last_loss,
                          first_loss, last_val, tokens * self.world / max(secs, 1e-9), secs,
                          warnings=self.warnings, initial_validation=initial_val,
                          best_step=best.step if best.kept else None, early_stopped=early,
                          auto=self.auto)
        if self.distillation:
            res.distillation = {role: {"prompts": d.prompts, "kept": d.prompts - sum(
                d.rejected.values()), "from_records": d.from_records,
                "rejected": dict(d.rejected), "dataset": str(d.path),
                "answered_this_run": d.from_teacher, "teacher_seconds": round(d.seconds, 1)}
                for role, d in self.distillation.items()}
        if status == "completed" and self.cfg.type == "classify" and self.valid is not None:
            res.classification = self.classification_report()
        # under FSDP the full weights exist only once gathered, which every process joins
        gathered = self.trainable_state() if self.fsdp and status == "completed" else None
        if status == "completed" and main:
            from afinar.training.export import export_run
            res.model_dir = export_run(self, res, self.export_model(gathered))
        accel.wait_for_everyone()
        return res

    def _rft_step(self, group: list[list[int]]) -> tuple[float, float, int]:
        """One GRPO update (training/rft.py): sample, grade, advantages, policy gradient."""
        from afinar.training.rft import advantages, answer_logps

        cfg, tok, dev = self.cfg, self.tokenizer, self.accel.device
        model = self.accel.unwrap_model(self.loss_mod).model
        n = cfg.samples_per_prompt
        prompts = [self.train.encoded[i] for bi in group for i in bi]
        t = time.time()
        rows, answers, cut = self._policy_sampler().sample(prompts, n, cfg.max_new_tokens,
                                                           cfg.temperature)
        sampled_s = time.time() - t
        texts = [tok.decode(a, skip_special_tokens=True).strip() for a in answers]
        rewards = torch.tensor(self.grader.grade_many(
            texts, [p.item for p in prompts for _ in range(n)]), dtype=torch.float32)
        adv = advantages(rewards, n).to(dev)
        n_tok = max(sum(len(a) for a in answers), 1)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        loss_total, kl_total = 0.0, 0.0
        for s in range(0, len(rows), cfg.batch_size):  # forward in chunks of batch_size rows
            with self._autocast():
                lp, mask = answer_logps(model, rows[s:s + cfg.batch_size],
                                        answers[s:s + cfg.batch_size], pad, dev)
                loss = -(adv[s:s + cfg.batch_size, None] * lp * mask).sum() / n_tok
                if cfg.method == "lora":  # the KL to the start: the adapter disabled
                    with torch.no_grad(), model.disable_adapter():
                        ref, _ = answer_logps(model, rows[s:s + cfg.batch_size],
                                              answers[s:s + cfg.batch_size], pad, dev)
                    d = ref - lp
                    kl = ((torch.exp(d) - d - 1) * mask).sum() / n_tok  # k3 estimator
                    kl_total += float(kl.detach())
                    if cfg.kl_coef:
                        loss = loss + cfg.kl_coef * kl
            self.accel.backward(loss)
            loss_total += float(loss.detach())
        params = [p for p in self.loss_mod.parameters() if p.requires_grad]
        self.accel.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        groups = rewards.view(-1, n)
        spread = float(groups.std(1, unbiased=False).mean())
        self.step_metrics = {"mean_reward": float(rewards.mean()), "reward_spread": spread,
                             "best_reward": float(groups.max(1).values.mean()),
                             "answer_length": sum(len(a) for a in answers) / len(answers),
                             "cut_share": cut / len(answers),
                             "sampling_seconds": round(sampled_s, 2)}
        if cfg.method == "lora":
            self.step_metrics["kl"] = kl_total
        return loss_total, float(rewards.mean()), sum(len(r) for r in rows) + n_tok

    def _step(self, group: list[list[int]]) -> tuple[float, float, int]:
        if self.cfg.type == "rft":
            return self._rft_step(group)
        enc = self.train.encoded
        n_label = sum(self.label_counts[i] for bi in group for i in bi)
        tot_loss, tot_correct, tot_extra, ntok = 0.0, 0, 0.0, 0
        for j, bi in enumerate(group):
            batch = self._batch([enc[i] for i in bi], packed=self.cfg.grouping == "packed")
            sync = j == len(group) - 1
            ctx = contextlib.nullcontext() if sync else self.accel.no_sync(self.loss_mod)
            with ctx:
                with self._autocast():
                    loss_sum, _n, correct, *extra = self._forward(batch)
                self.accel.backward(loss_sum / max(n_label, 1))
            tot_loss += float(loss_sum.detach())
            tot_correct += int(correct.detach())
            tot_extra += sum(float(x) for x in extra)
            ntok += batch["n_tokens"]
        params = [p for p in self.loss_mod.parameters() if p.requires_grad]
        self.accel.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.tensor([tot_loss, tot_correct, n_label, tot_extra], dtype=torch.float64,
                             device=self.accel.device)
        stats = self.accel.reduce(stats, reduction="sum")
        acc = float(stats[1] / stats[2].clamp(min=1))
        # accuracy: of labelled tokens, or (dpo) of pairs ranked right
        self.step_metrics = {"reward_accuracy": acc, "reward_margin": float(
            stats[3] / stats[2].clamp(min=1))} if self.cfg.type == "dpo" else {
            "token_accuracy": acc}
        return float(stats[0] / stats[2].clamp(min=1)), acc, ntok

    @torch.no_grad()
    def classification_report(self) -> dict:
        """Accuracy, macro-F1 and the confusion matrix on the validation set (every process
        computes it: under FSDP a forward needs them all)."""
        from afinar.eval.classification import classification_metrics

        model = self.accel.unwrap_model(self.loss_mod).model
        model.eval()
        enc = self.valid.encoded
        preds = []
        for s in range(0, len(enc), self.cfg.batch_size):
            b = self._batch(enc[s:s + self.cfg.batch_size])
            with self._autocast():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            preds += logits.argmax(-1).tolist()
        model.train()
        return classification_metrics(self.valid.targets(), preds, self.valid.labels)

    def _agree_stop(self) -> bool:
        """Stop when asked (callback, or a STOP file in the output directory), and only when
        every process agrees, so they all checkpoint at the same step."""
        stop_file = self.out / "STOP"
        local = bool(self.should_stop()) or stop_file.exists()
        if self.world > 1:
            flag = torch.tensor([float(local)], device=self.accel.device)
            local = bool(self.accel.reduce(flag, reduction="sum").item() > 0)
        if local and self.accel.is_main_process:
            stop_file.unlink(missing_ok=True)  # or the resumed run would stop at once
        return local

    def _validate_and_log(self, writer, step: int, epoch: int) -> dict | None:
        val = self.validate()
        if val and writer:
            writer.validation(step, epoch, val["validation_loss"],
                              **{k: v for k, v in val.items()
                                 if k not in ("validation_loss", "perplexity")})
            self.progress(ProgressEvent("validate", step, None, val))
        return val

    # -- state (plain, DDP and FSDP alike) ------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable weights by the plain model's names, complete on the main process (under
        FSDP every process must call this: the shards are gathered)."""
        if not self.fsdp:
            return ckpt.trainable_state(self.accel.unwrap_model(self.loss_mod).model)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )
        full = get_model_state_dict(self.loss_mod, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        keep = set(self.trainable_names)
        return {k.removeprefix("model."): v.contiguous() for k, v in full.items()
                if k.removeprefix("model.") in keep}

    def optimizer_state(self) -> dict:
        if not self.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )
        return get_optimizer_state_dict(self.loss_mod, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_state(self, weights: dict[str, torch.Tensor], optim: dict) -> None:
        if not self.fsdp:
            params = dict(self.accel.unwrap_model(self.loss_mod).model.named_parameters())
            missing = [n for n in weights if n not in params]
            if missing:
                raise CheckpointError(f"the checkpoint has weights this model lacks: "
                                      f"{missing[:3]}")
            with torch.no_grad():
                for n, t in weights.items():
                    params[n].copy_(t)
            self.optimizer.load_state_dict(optim)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.loss_mod, {f"model.{k}": v for k, v in weights.items()},
                             options=opts)
        set_optimizer_state_dict(self.loss_mod, self.optimizer, optim, options=opts)

    def export_model(self, gathered: dict[str, torch.Tensor] | None):
        """The trained model as a plain (PEFT) module. Under FSDP: a fresh unsharded copy with
        the gathered weights."""
        if gathered is None:
            return self.accel.unwrap_model(self.loss_mod).model
        model = build_model(self.cfg, self.resolved, self.dtype, "cpu")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in gathered.items():
                params[n].copy_(t)
        return model

    def _save(self, step: int, epoch: int, batch_in_epoch: int) -> None:
        weights, optim = self.trainable_state(), self.optimizer_state()
        if self.accel.is_main_process:
            ckpt.save_checkpoint(self.out / "checkpoints", step, epoch, batch_in_epoch,
                                 weights, optim, self.scheduler, self.cfg.fingerprint(),
                                 self.cfg.keep_checkpoints)
        self.accel.wait_for_everyone()


def _json(obj) -> str:
    import json
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def train(cfg: TrainConfig, settings: Settings, progress: ProgressCallback = null_progress,
          should_stop: Callable[[], bool] | None = None, resume: bool = False) -> TrainResult:
    """Validate inputs, train, write metrics/checkpoints/artifacts. See TrainConfig."""
    return Trainer(cfg, settings, progress, should_stop).prepare(resume).fit()

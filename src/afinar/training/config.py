"""The typed description of a training run. It drives the YAML config, the CLI flags (with
their help text) and validation; Bedrock's hyperparameter names are accepted as aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from afinar.errors import ConfigError

# Bedrock hyperparameter name -> our field name
BEDROCK_ALIASES = {
    "epochCount": "epochs",
    "batchSize": "batch_size",
    "learningRate": "learning_rate",
    "learningRateWarmupSteps": "warmup_steps",
    "earlyStoppingPatience": "early_stopping_patience",
    "earlyStoppingThreshold": "early_stopping_threshold",
    "trainingSamplePerPrompt": "samples_per_prompt",  # RFT (rftConfig.hyperParameters)
    "inferenceMaxTokens": "max_new_tokens",
    "maxPromptLength": "max_prompt_length",
}

# Bedrock's REINFORCEMENT_FINE_TUNING hyperparameters (customizationConfig.rftConfig.
# hyperParameters, typed numbers) -> our fields
RFT_NAMES = {"epochCount": "epochs", "batchSize": "batch_size", "learningRate": "learning_rate",
             "maxPromptLength": "max_prompt_length",
             "trainingSamplePerPrompt": "samples_per_prompt",
             "inferenceMaxTokens": "max_new_tokens", "evalInterval": "eval_every"}

# Settings a request's hyperparameters may not set: they name files, folders or models, or
# spend the server's resources. A job gets them from the request's typed fields
# (trainingDataConfig, validationDataConfig, baseModelIdentifier, customModelName,
# outputDataConfig) or from the server's settings, through the storage roots.
SERVER_ONLY = frozenset({"train_data", "validation_data", "base_model", "output_dir", "grader",
                         "teacher", "name", "threads", "fsdp"})
MAX_REQUEST_SETTINGS = 64
MAX_SETTING_CHARS = 256
# Settings that default to "auto": chosen from the data and the model when the run starts
# (afinar/training/auto.py), each with its reason, unless given.
AUTO_FIELDS = ("epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha", "lora_layers",
               "max_length", "value_variants")
Auto = Literal["auto"]
Epochs = Annotated[int, Field(ge=1, le=10)] | Auto
BatchSize = Annotated[int, Field(ge=1, le=64)] | Auto
LearningRate = Annotated[float, Field(gt=0, le=1)] | Auto
LoraRank = Annotated[int, Field(ge=1, le=512)] | Auto
LoraAlpha = Annotated[int, Field(ge=1, le=4096)] | Auto
LoraLayers = Annotated[int, Field(ge=1)] | Auto | None
MaxLength = Annotated[int, Field(ge=8, le=32768)] | Auto
ValueVariants = Annotated[int, Field(ge=0, le=8)] | Auto


class TrainConfig(BaseModel):
    """Hyperparameters and inputs of a fine-tuning run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    type: Literal["sft", "cpt", "classify", "dpo", "rft", "distill"] = Field(
        "sft", description="sft: supervised fine-tuning on prompt/answer data; cpt: continued "
        "pre-training on a corpus (.jsonl of {\"input\"}/{\"text\"}, .txt/.md files or a "
        "folder), packed into blocks of max_length tokens; classify: a sequence-classification "
        "head trained on {\"text\", \"label\"} data (e.g. base model all-minilm-l6-v2); "
        "dpo: preference tuning on pairs (OpenAI's input/preferred_output/"
        "non_preferred_output or prompt/chosen/rejected) with the loss in `loss`; rft: "
        "reinforcement fine-tuning (GRPO) on prompts scored by `grader`; distill: `teacher` "
        "answers the prompts, the model is fine-tuned on its answers.")
    teacher: str | None = Field(None, description="type distill: the model that answers the "
                                "prompts: a registry id, custom model, local folder or hub id, "
                                "or an endpoint registered in afinar.toml [teachers].")
    use_prompt_response: bool = Field(False, description="type distill: a prompt record that "
                                      "has its own answer keeps it (the teacher is not asked).")
    loss: Literal["dpo", "ipo", "hinge", "orpo"] = Field(
        "dpo", description="type dpo: the preference loss. dpo (sigmoid), ipo, hinge (SLiC) "
        "against the starting model as reference; orpo: no reference, adds the preferred "
        "answers' likelihood (so it can start from a base model).")
    sft_weight: float = Field(0.0, ge=0, le=10, description="type dpo (dpo/ipo/hinge): add "
                              "this weight x the preferred answers' negative log-likelihood "
                              "(per token) to the loss (RPO; TRL's rpo_alpha): keeps the "
                              "preferred answers likely while the pair's gap grows.")
    grader: str = Field("json", description="type rft: what scores each sampled answer: "
                        "exact, json (the same JSON value as item.reference_answer), fields "
                        "(F1 of its JSON fields against the reference's), json_valid, a .json "
                        "grader object (OpenAI's grader types and afinar's: eval/graders.py) or "
                        "a .py file with grade(sample, item).")
    samples_per_prompt: int = Field(4, ge=2, le=64, description="type rft: answers sampled "
                                    "per prompt (Bedrock's trainingSamplePerPrompt).",
                                    validation_alias=AliasChoices("samples_per_prompt",
                                                                  "trainingSamplePerPrompt"))
    max_new_tokens: int = Field(256, ge=1, le=32768, description="type rft: the longest "
                                "sampled answer in tokens (Bedrock's inferenceMaxTokens; a "
                                "longer one is cut and graded as it is, so every reference "
                                "answer must fit); type distill: the longest teacher answer "
                                "(maxResponseLengthForInference); longer ones are left out.",
                                validation_alias=AliasChoices("max_new_tokens",
                                                              "inferenceMaxTokens"))
    max_prompt_length: int = Field(1024, ge=8, le=32768, description="type rft: the longest "
                                   "prompt in tokens; longer ones are refused "
                                   "(Bedrock's maxPromptLength).",
                                   validation_alias=AliasChoices("max_prompt_length",
                                                                 "maxPromptLength"))
    temperature: float = Field(1.0, gt=0, le=2, description="type rft: sampling temperature.")
    kl_coef: float = Field(0.0, ge=0, le=10, description="type rft, LoRA: weight of the KL to "
                           "the starting model (0: none, as TRL's GRPO default).")
    beta: float = Field(0.1, gt=0, le=10, description="type dpo: the strength of the "
                        "preference against staying near the reference (dpo/ipo/hinge), or "
                        "the weight of the odds-ratio term (orpo).")
    scratch_size: Literal["tiny", "small", "medium"] | None = Field(
        None, description="cpt only: train a new randomly initialised llama-architecture model "
        "of this size instead of continuing base_model (method full).")
    tokenizer: Literal["base", "bpe"] = Field(
        "base", description="With scratch_size: the base model's tokenizer, or a byte-level "
        "BPE tokenizer trained on the corpus.")
    vocab_size: int = Field(8000, ge=300, le=262144,
                            description="With scratch_size and tokenizer=bpe: vocabulary size.")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="classify: weight the loss by inverse class frequency.")
    train_data: str = Field(..., description="Training data file (JSONL, JSON, CSV or Parquet; "
                            "for cpt also .txt/.md files or a folder).")
    validation_data: str | None = Field(None, description="Optional validation data file.")
    base_model: str = Field("smollm2-135m-instruct",
                            description="Registry id, custom model, local dir, .gguf or hub id.")
    output_dir: str | None = Field(
        None, description="Where to write the run (default $AFINAR_HOME/runs/<name>).")
    name: str | None = Field(None, description=(
        "Custom model name (default: derived from data): 1-63 letters, digits, '.', '_' or "
        "'-', starting with a letter or digit (it names a folder; no '/' or '..')."))
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapter or full weights.")
    quantize: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA — the frozen base loaded in 4-bit NF4 (bitsandbytes, "
        "double quantization), LoRA adapters on top; needs method=lora and bitsandbytes "
        "(pip install 'afinar[qlora]'; CUDA, or a CPU with bitsandbytes >= 0.46).")
    epochs: Epochs = Field(
        "auto", description="Passes over the training data (1-10); auto: enough "
        "for at least 90 optimizer steps, at most 5 (1 for cpt).",
        validation_alias=AliasChoices("epochs", "epochCount"))
    batch_size: BatchSize = Field(
        "auto", description="Examples per batch (1-64); auto: 8, 16 from 4,000 "
        "examples, 32 from 20,000; smaller for long examples (~8k tokens a batch).",
        validation_alias=AliasChoices("batch_size", "batchSize"))
    learning_rate: LearningRate = Field(
        "auto", description="Peak learning rate (0-1]; auto: for LoRA 1e-3 x "
        "sqrt(135M / the model's parameters), at most 1e-3; 2e-5 for full.",
        validation_alias=AliasChoices("learning_rate", "learningRate"))
    learning_rate_multiplier: float = Field(
        1.0, gt=0, le=100, description="With learning_rate auto: scale the chosen rate "
        "(OpenAI's learning_rate_multiplier).")
    warmup_steps: int = Field(5, ge=0, le=250, description="Linear warm-up steps (0-250).",
                              validation_alias=AliasChoices("warmup_steps",
                                                            "learningRateWarmupSteps"))
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warm-up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_length: MaxLength = Field(
        "auto", description="Longest sequence in tokens (8-32768); auto: the longest "
        "example's length (sft, distill; rounded up to 64, within the model's context, the "
        "memory and 8192), 512 for the other types. A longer example loses the middle of its "
        "prompt, never its answer; one whose last answer alone is longer is left out and "
        "named.")
    grad_accum: int = Field(1, ge=1, le=256, description="Gradient accumulation steps.")
    value_variants: ValueVariants = Field(
        "auto", description="sft: extra training variants of each example whose prompt hands "
        "values to its answer (names, ids, codes, amounts, counts), with those values replaced "
        "by new ones, so the model learns to copy or convert what the prompt says instead of "
        "recalling training's values (data/augment.py); three times as many where the answer "
        "computes a value (a unit conversion, a sum). 0: none; auto: 1 when at least a fifth "
        "of the examples hand values, else 0. Validation's exact match then uses such variants "
        "of the held-out examples: values never seen.")
    lora_r: LoraRank = Field("auto", description="LoRA rank; auto: 16.")
    lora_alpha: LoraAlpha = Field("auto", description="LoRA alpha (scale = alpha / r); auto: 2 x r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: str = Field("all-linear",
                              description="Comma-separated module names, or 'all-linear'.")
    lora_layers: LoraLayers = Field(
        "auto", description="Apply LoRA only to the top N transformer layers (none or "
        "0: all; auto: all). The backward pass then stops below them: ~40% faster with half "
        "the layers.")
    seed: int = Field(42, ge=0, description="Seed for data order, initialisation and dropout.")
    checkpoint_every: int = Field(50, ge=0,
                                  description="Save a checkpoint every N optimizer steps "
                                              "(0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    eval_every: int = Field(0, ge=0, description="Validate every N steps (0: at checkpoints and "
                                                 "at the end).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    validation_split: float = Field(
        0.1, ge=0, le=0.5, description="sft/classify without validation_data: hold out this "
        "share of the training examples (at least 5, at most 200; only when there are "
        "100 or more) to validate on during training. 0: no hold-out.")
    keep_best: bool = Field(True, description="With validation during training: the output is "
                            "the weights of the best validation (lowest loss), not the last.")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=100, description="Stop when this many validations in a row have not "
        "improved the best validation loss by more than early_stopping_threshold (needs "
        "validation data or a hold-out).")
    early_stopping_threshold: float = Field(
        0.0, ge=0, le=10, description="The validation-loss improvement that counts for early "
        "stopping.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, "
        "CUDA), else fp32. Trainable weights and optimizer state stay fp32.")
    grouping: Literal["length", "packed", "random"] = Field(
        "length", description="length: batch similar lengths together (little padding); packed: "
        "concatenate each batch into one row, attention kept per example (no padding); "
        "random: plain shuffled batches.")
    fsdp: bool = Field(False, description="Shard weights, gradients and optimizer state over the "
                       "processes (FSDP2 through accelerate) for models one device cannot hold; "
                       "needs torchrun/accelerate launch with 2+ processes. `accelerate launch "
                       "--use_fsdp` turns it on too.")
    merge: bool = Field(True, description="Also write a merged model (LoRA only).")
    skip_invalid: bool = Field(False, description="Skip invalid records instead of failing.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        from afinar.models.registry import NAME_RULE, valid_name

        if v is not None and not valid_name(v):
            raise ValueError(f"must be {NAME_RULE}")
        return v

    @field_validator("learning_rate", "lora_layers", mode="before")
    @classmethod
    def _none_or_zero(cls, v, info):
        # learning_rate: null is the old spelling of "auto"; lora_layers: 0 means all layers
        if info.field_name == "learning_rate" and v is None:
            return "auto"
        if info.field_name == "lora_layers" and v in (0, "0"):
            return None
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.scratch_size and self.type != "cpt":
            raise ValueError("scratch_size (training from scratch) needs type=cpt: a corpus")
        if self.scratch_size and self.method != "full":
            raise ValueError("training from scratch trains every weight: set method=full")
        if self.type != "dpo" and {"loss", "beta", "sft_weight"} & self.model_fields_set:
            raise ValueError("loss, beta and sft_weight are settings of preference tuning: "
                             "set type=dpo")
        if self.sft_weight and self.loss == "orpo":
            raise ValueError("sft_weight is for the dpo, ipo and hinge losses: orpo has its "
                             "own likelihood term (weighted by beta)")
        rft = {"grader", "samples_per_prompt", "max_prompt_length", "temperature",
               "kl_coef"} & self.model_fields_set
        if self.type not in ("rft", "distill"):  # distill: the teacher's longest answer
            rft |= {"max_new_tokens"} & self.model_fields_set
        if self.type != "rft" and rft:
            raise ValueError(f"{', '.join(sorted(rft))}: settings of reinforcement "
                             f"fine-tuning: set type=rft")
        distill = {"teacher", "use_prompt_response"} & self.model_fields_set
        if self.type != "distill" and distill:
            raise ValueError(f"{', '.join(sorted(distill))}: settings of distillation: set "
                             f"type=distill")
        if self.type == "distill" and not self.teacher:
            raise ValueError("type=distill needs a teacher: the model that answers the prompts")
        if self.type == "rft" and self.kl_coef and self.method != "lora":
            raise ValueError("kl_coef needs method=lora (the reference is the model with its "
                             "adapter disabled)")
        if self.learning_rate_multiplier != 1 and self.learning_rate != "auto":
            raise ValueError("learning_rate_multiplier scales the auto learning rate: leave "
                             "learning_rate auto, or set the rate itself")
        if self.quantize != "none" and self.method != "lora":
            raise ValueError("quantize=4bit (QLoRA) trains LoRA adapters on a frozen 4-bit "
                             "base: set method=lora")
        if self.quantize != "none" and (self.type == "classify" or self.fsdp):
            raise ValueError("quantize=4bit is not available for type=classify or with fsdp")
        if self.type == "dpo" and self.grouping == "packed":
            raise ValueError("grouping=packed is not available for type=dpo (each pair's two "
                             "answers are scored separately): use length or random")
        return self

    @property
    def lr(self) -> float:
        if self.learning_rate == "auto":
            raise ValueError("learning_rate is not chosen yet (afinar.training.auto.resolve)")
        return self.learning_rate

    def hyperparameters(self) -> dict[str, Any]:
        skip = {"train_data", "validation_data", "output_dir", "name", "threads"}
        d = {k: v for k, v in self.model_dump().items() if k not in skip}
        d["learning_rate"] = self.lr
        return d

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the original."""
        keys = ("type", "scratch_size", "tokenizer", "vocab_size", "train_data", "base_model",
                "method", "quantize", "epochs", "batch_size", "grad_accum", "lora_r",
                "lora_alpha", "lora_targets", "lora_layers", "seed", "max_length", "grouping",
                "max_steps", "value_variants")
        d = {k: getattr(self, k) for k in keys}
        d["train_data"] = str(Path(self.train_data).resolve())
        d["learning_rate"] = self.lr
        if self.type == "dpo":
            d.update(loss=self.loss, beta=self.beta, sft_weight=self.sft_weight)
        if self.type == "rft":
            d.update(grader=self.grader, samples_per_prompt=self.samples_per_prompt,
                     max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                     kl_coef=self.kl_coef)
        if self.type == "distill":
            d.update(teacher=self.teacher, max_new_tokens=self.max_new_tokens,
                     use_prompt_response=self.use_prompt_response)
        return d


def numeric_bounds(field: str) -> tuple[type, float | None, float | None]:
    """A numeric setting's kind (int or float) and its range [lo, hi] (gt counts as lo), read
    from TrainConfig: for the forms and docs that show them."""
    import typing

    f = TrainConfig.model_fields[field]
    kind, metas = f.annotation, list(f.metadata)
    for member in typing.get_args(f.annotation) or ():
        if typing.get_origin(member) is Annotated:
            kind, *extra = typing.get_args(member)
            metas += [m for x in extra for m in getattr(x, "metadata", [x])]
    lo = hi = None
    for m in metas:
        for name in ("ge", "gt"):
            lo = getattr(m, name, None) if getattr(m, name, None) is not None else lo
        hi = getattr(m, "le", None) if getattr(m, "le", None) is not None else hi
    return (float if kind in (float, float | None) else int), lo, hi


def parse_train_config(values: dict[str, Any], source: str = "arguments") -> TrainConfig:
    """Validate once, at the edge, with an error that names the field and its valid range."""
    values = dict(values)
    for alias, field in BEDROCK_ALIASES.items():
        if alias in values and field in values and values[alias] != values[field]:
            raise ConfigError(f"both '{alias}' and '{field}' are set in {source}, to "
                              f"{values[alias]!r} and {values[field]!r}",
                              hint="they are the same setting: keep one")
        if alias in values:
            values[field] = values.pop(alias)
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as e:
        msgs, seen = [], set()
        for err in e.errors():
            loc = err["loc"]
            if len(loc) == 2 and loc[0] in AUTO_FIELDS:  # one message for "a number or auto"
                if loc[0] in seen:
                    continue
                seen.add(loc[0])
                kind = "an integer" if loc[0] != "learning_rate" else "a number"
                num = next((x for x in e.errors() if x["loc"][0] == loc[0] and
                            "literal" not in str(x["loc"][1]) and not x["type"].endswith(
                                ("_parsing", "_type"))), None)  # a number out of range
                err = {**err, "loc": loc[:1], "msg": num["msg"] if num else
                       f"must be {kind} or \"auto\""}
            field = ".".join(str(p) for p in err["loc"]) or "config"
            bedrock = {v: k for k, v in BEDROCK_ALIASES.items()}.get(field)
            name = f"{field} ({bedrock})" if bedrock else field
            if err["type"] == "extra_forbidden":
                msgs.append(f"unknown setting '{field}'")
            else:
                msgs.append(f"'{name}': {err['msg'].removeprefix('Value error, ')} "
                            f"(got {err.get('input')!r})")
        raise ConfigError(f"invalid training config in {source}: " + "; ".join(msgs),
                          hint=f"valid settings: {', '.join(sorted(TrainConfig.model_fields))}; "
                               f"see afinar train --help") from e


def request_hyperparameters(hp: Any, source: str = "hyperParameters") -> dict[str, Any]:
    """The hyperparameters of a request (Bedrock's `hyperParameters`, a catalog run), checked
    before anything is stored: an object of at most 64 documented settings, none of them a file,
    model or server setting, each value short. Raises ConfigError naming the field."""
    if not isinstance(hp, dict):
        raise ConfigError(f"{source} must be an object of setting -> value, got "
                          f"{type(hp).__name__}")
    if len(hp) > MAX_REQUEST_SETTINGS:
        raise ConfigError(f"{source} has {len(hp)} settings; at most {MAX_REQUEST_SETTINGS}")
    allowed = sorted(set(TrainConfig.model_fields) - SERVER_ONLY) + sorted(BEDROCK_ALIASES)
    for key, value in hp.items():
        if key in SERVER_ONLY:
            raise ConfigError(f"{source}.{key} cannot be set by a request: it names a file, a "
                              f"model or a server resource",
                              hint="give data in trainingDataConfig/validationDataConfig, the "
                                   "model in baseModelIdentifier, the name in customModelName")
        if key not in allowed:
            raise ConfigError(f"{source}.{key[:80]} is not a hyperparameter",
                              hint=f"valid hyperparameters: {', '.join(allowed)}")
        if not isinstance(value, str | int | float | bool) or value is None:
            raise ConfigError(f"{source}.{key} must be a string or a number, got "
                              f"{type(value).__name__}")
        if len(str(value)) > MAX_SETTING_CHARS:
            raise ConfigError(f"{source}.{key} is {len(str(value))} characters long; at most "
                              f"{MAX_SETTING_CHARS}")
    return dict(hp)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    hp = data.pop("hyperParameters", None) or data.pop("hyperparameters", None) or {}
    data.update(hp)
    return data

"""The classification recipe: `{"text", "label"}` data, a sequence-classification head on an
encoder (all-MiniLM-L6-v2) or a causal LM, trained by the same Trainer as fine-tuning.

The data becomes Encoded examples whose first label slot holds the class index (the rest is
ignored), so batching, checkpoints, resume, DDP/FSDP and metrics files are shared with the other
recipes; only the model head and the loss differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from afinar.data.readers import read_records
from afinar.data.schema import normalize
from afinar.data.tokenize import IGNORE_INDEX, Encoded
from afinar.errors import DataError, ModelLoadError


@dataclass
class ClassData:
    path: str
    encoded: list[Encoded]
    labels: list[str]  # index -> name
    counts: dict[str, int]
    truncated: int = 0
    schema: str = "classification"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.encoded)

    def label_counts(self) -> list[int]:
        return [1] * len(self.encoded)

    def targets(self) -> list[int]:
        return [e.labels[0] for e in self.encoded]

    def summary(self) -> dict:
        return {"path": self.path, "schema": self.schema, "examples": len(self.encoded),
                "tokens": self.n_tokens, "labels": self.counts, "truncated": self.truncated}


def prepare_classification(path: str, tokenizer, max_length: int,
                           labels: list[str] | None = None, role: str = "training") -> ClassData:
    read = read_records(path)
    norm = normalize(read, expected="classification")
    if norm.issues or norm.schema != "classification":
        raise DataError(f"{path}: the {role} data is not usable for classification: every "
                        f"record needs a non-empty 'text' and a 'label'", norm.issues,
                        hint=f"see: afinar data check {path}")
    names = [str(e.label) for e in norm.examples]
    counts = dict(Counter(names).most_common())
    if labels is None:
        if len(counts) < 2:
            raise DataError(f"{path}: only one class ('{names[0]}') in the {role} data; "
                            f"classification needs at least two")
        labels = sorted(counts)
    else:
        unknown = sorted(set(counts) - set(labels))
        if unknown:
            lines = [e.line for e in norm.examples if str(e.label) in unknown][:10]
            raise DataError(f"{path}: {role} labels {unknown} are not in the training data "
                            f"(lines {lines})", hint=f"training labels: {labels}")
    index = {name: i for i, name in enumerate(labels)}
    out = ClassData(str(path), [], labels, counts)
    for e, name in zip(norm.examples, names, strict=True):
        ids = tokenizer(e.text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            out.truncated += 1
            ids = ids[:max_length]
        out.encoded.append(Encoded(ids, [index[name]] + [IGNORE_INDEX] * (len(ids) - 1),
                                   len(ids) >= max_length, e.line))
    if out.truncated:
        out.warnings.append(f"{out.truncated} {role} text(s) longer than max_length="
                            f"{max_length} tokens were truncated")
    ratio = max(counts.values()) / min(counts.values())
    if role == "training" and ratio >= 3:
        out.warnings.append(f"classes are imbalanced ({ratio:.1f}x between the most and least "
                            f"frequent): consider class_weights=balanced, or afinar data clean "
                            f"--balance")
    return out


def load_classifier(path: str, labels: list[str], dtype: torch.dtype, device: str,
                    pad_token_id: int | None):
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)}, dtype=dtype,
            ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a sequence-classification model from '{path}': {e}",
                             hint="use an encoder (all-minilm-l6-v2) or a causal LM") from e
    if model.config.pad_token_id is None:  # causal LMs find the last token through it
        model.config.pad_token_id = pad_token_id
    return model.to(device)


class ClassifierLoss(nn.Module):
    """forward -> (summed loss, examples, correct), the interface of SelectiveLMLoss."""

    def __init__(self, model: nn.Module, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        y = labels[:, 0]
        loss_sum = F.cross_entropy(logits.float(), y, weight=self.class_weights,
                                   reduction="sum")
        correct = (logits.argmax(-1) == y).sum()
        return loss_sum, torch.tensor(len(y), device=y.device), correct


def balanced_weights(data: ClassData) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the examples (sklearn's 'balanced')."""
    n, k = len(data.encoded), len(data.labels)
    counts = Counter(data.targets())
    return torch.tensor([n / (k * counts.get(i, 1)) for i in range(k)], dtype=torch.float32)

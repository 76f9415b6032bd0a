"""Metrics for classification: accuracy, macro-F1, per-class scores, the confusion matrix and
the majority-class baseline; and their text rendering for the CLI."""

from __future__ import annotations

from collections import Counter


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: true,
    columns: predicted), plus the majority-class baseline."""
    k = len(labels)
    cm = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t][p] += 1
    per = {}
    for i, name in enumerate(labels):
        tp = cm[i][i]
        fp = sum(cm[r][i] for r in range(k)) - tp
        fn = sum(cm[i]) - tp
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[name] = {"precision": prec, "recall": rec, "f1": f1, "support": sum(cm[i])}
    n = len(y_true)
    majority = max(Counter(y_true).values()) / n if n else 0.0
    return {"accuracy": sum(cm[i][i] for i in range(k)) / n if n else 0.0,
            "macro_f1": sum(v["f1"] for v in per.values()) / k if k else 0.0,
            "majority_baseline": majority, "per_class": per, "labels": labels,
            "confusion_matrix": cm, "n": n}


def format_metrics(m: dict) -> str:
    w = max(len(x) for x in m["labels"]) + 2
    lines = [f"accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  (majority class "
             f"{m['majority_baseline']:.3f}, n={m['n']})", "",
             "confusion matrix (rows: true, columns: predicted)",
             " " * w + "".join(f"{x[:8]:>9}" for x in m["labels"])]
    for name, row in zip(m["labels"], m["confusion_matrix"], strict=True):
        lines.append(f"{name:<{w}}" + "".join(f"{c:>9}" for c in row))
    return "\n".join(lines)

"""The HTML evaluation report: per-metric bars for each model, the training curves of custom
models (from their Bedrock-layout CSVs), and the examples where the models differ. Plots are
matplotlib PNGs embedded in the page, so the report is one self-contained file."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def metric_bars(report: dict, metrics: list[str], percent: set[str]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["id"] for m in report["models"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, k in zip(axes[0], metrics, strict=True):
        vals = [m["metrics"][k] * (100 if k in percent else 1) for m in report["models"]]
        bars = ax.bar(range(len(models)), vals, color=["#9aa5b1", "#2f6fdb", "#1f9d55",
                                                       "#d97706"][: len(models)])
        ax.set_title(k.replace("_", " "))
        ax.set_xticks(range(len(models)), [Path(x).name[:18] for x in models], rotation=20,
                      fontsize=7)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.1f}" if k in percent else f"{v:.3g}", (b.get_x() +
                        b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8)
        if k in percent:
            ax.set_ylim(0, 105)
    return _png(fig)


def loss_curves(run_dirs: dict[str, Path]) -> str | None:
    """Training (and validation) loss per step for each custom model with a run directory."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for name, d in run_dirs.items():
        t = d / "training_artifacts" / "step_wise_training_metrics.csv"
        v = d / "validation_artifacts" / "post_fine_tuning_validation" / "validation_metrics.csv"
        if t.exists():
            rows = list(csv.DictReader(t.open(encoding="utf-8")))
            series.append((f"{name} train", [int(r["step_number"]) for r in rows],
                           [float(r["training_loss"]) for r in rows], "-"))
        if v.exists():
            rows = list(csv.DictReader(v.open(encoding="utf-8")))
            series.append((f"{name} validation", [int(r["step_number"]) for r in rows],
                           [float(r["validation_loss"]) for r in rows], "o--"))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for label, x, y, style in series:
        ax.plot(x, y, style, label=label, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def write_html(report: dict, out: Path, title: str, metrics: list[str], percent: set[str],
               run_dirs: dict[str, Path]) -> Path:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font:14px system-ui,sans-serif;max-width:980px;margin:2em auto;"
             "padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}code{font-size:12px}"
             ".ok{color:#1f9d55}.bad{color:#c81e1e}</style>",
             f"<h1>{e(title)}</h1>",
             f"<p>Data: <code>{e(str(report['data']))}</code>, {report['n']} examples.</p>",
             "<table><tr><th>model</th>" + "".join(f"<th>{e(k)}</th>" for k in metrics) +
             "<th>seconds</th></tr>"]
    for m in report["models"]:
        cells = "".join(
            f"<td>{m['metrics'][k] * 100:.1f}%</td>" if k in percent else
            f"<td>{m['metrics'][k]:.4g}</td>" for k in metrics)
        parts.append(f"<tr><td><code>{e(m['id'])}</code></td>{cells}"
                     f"<td>{m.get('seconds', '')}</td></tr>")
    parts.append("</table>")
    parts.append(f"<h2>Metrics</h2><img alt='metrics' src='data:image/png;base64,"
                 f"{metric_bars(report, metrics, percent)}'>")
    curves = loss_curves(run_dirs)
    if curves:
        parts.append(f"<h2>Training curves</h2><img alt='loss curves' "
                     f"src='data:image/png;base64,{curves}'>")
    diffs = report.get("differences")
    if diffs:
        parts.append(f"<h2>Examples where the models differ ({len(diffs)} of {report['n']})"
                     "</h2><table><tr><th>prompt</th><th>reference</th>" +
                     "".join(f"<th>{e(Path(m['id']).name)}</th>" for m in report["models"]) +
                     "</tr>")
        for i in diffs[:50]:
            ex = report["examples"][i]
            cells = "".join(
                f"<td class='{'ok' if ex['exact_match'][mid] else 'bad'}'><code>"
                f"{e(o[:300])}</code></td>" for mid, o in ex["outputs"].items())
            parts.append(f"<tr><td>{e(ex['prompt'][:300])}</td><td><code>"
                         f"{e(str(ex['reference'])[:300])}</code></td>{cells}</tr>")
        parts.append("</table>")
    p = out / "report.html"
    p.write_text("\n".join(parts), encoding="utf-8")
    return p

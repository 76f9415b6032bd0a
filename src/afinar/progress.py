"""Progress reporting. Library code calls a `ProgressCallback`; the CLI renders it as a
progress bar (tqdm) and a job worker records it as events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProgressEvent:
    stage: str  # e.g. "train", "eval", "convert", "generate"
    current: int
    total: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(_: ProgressEvent) -> None:
    return None


class TqdmProgress:
    """Renders progress events as one tqdm bar per stage (used by the CLI)."""

    def __init__(self, disable: bool = False):
        self._bars: dict[str, Any] = {}
        self.disable = disable

    def __call__(self, ev: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if ev.total is None:  # a one-off report (e.g. validation): a line, not a bar
            if not self.disable:
                vals = ", ".join(f"{k}={_fmt(v)}" for k, v in ev.metrics.items())
                tqdm.write(f"{ev.stage} at step {ev.current}: {vals}" + (
                    f" {ev.message}" if ev.message else ""))
            return
        bar = self._bars.get(ev.stage)
        if bar is None:
            bar = tqdm(total=ev.total, desc=ev.stage, disable=self.disable, dynamic_ncols=True,
                       unit="step" if ev.stage == "train" else "it")
            self._bars[ev.stage] = bar
        if ev.total is not None and bar.total != ev.total:
            bar.total = ev.total
        bar.n = ev.current
        if ev.metrics:
            bar.set_postfix({k: _fmt(v) for k, v in ev.metrics.items()}, refresh=False)
        if ev.message:
            bar.set_description_str(f"{ev.stage}: {ev.message}", refresh=False)
        bar.refresh()
        if ev.total is not None and ev.current >= ev.total:
            bar.close()
            self._bars.pop(ev.stage, None)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.4g}"
    return v

"""Progress reporting. Library code calls a `ProgressCallback`; the CLI renders it as a
progress bar (tqdm) and a job worker records it as events."""

from __future__ import annotations

import re
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


# a tqdm/rich bar: "45%|████", "12/50 [00:03<00:10, 3.2it/s]", block characters
_BAR = re.compile(r"\d+%\||[█▏▎▍▌▋▊▉━]|\d+/\d+ \[\d|it/s\]|s/it\]")


def log_tail(text: str, n: int = 5, limit: int = 1000) -> str:
    """The last `n` meaningful lines of a log, joined by ' | ': progress-bar redraws (split on
    carriage returns) and blank lines dropped, so a failure message quotes the error."""
    lines = [x.strip() for x in re.split(r"[\r\n]+", text)]
    keep = [x for x in lines if x and not _BAR.search(x)]
    return " | ".join(keep[-n:])[-limit:]


class TqdmProgress:
    """Renders progress events as one tqdm bar per stage (used by the CLI)."""

    def __init__(self, disable: bool = False):
        self._bars: dict[str, Any] = {}
        self.disable = disable

    def __call__(self, ev: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if ev.total is None:  # a one-off report (e.g. validation): a line, not a bar
            if not self.disable and ev.message and not ev.metrics:  # a note: its own words
                tqdm.write(ev.message)
            elif not self.disable:
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

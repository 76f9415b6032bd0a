"""End-to-end demos."""

from datetime import UTC, datetime
from pathlib import Path


def output_dir(settings, chosen: str | None, kind: str) -> tuple[Path, str]:
    """The demo's folder (created) and its timestamp: the user's, or
    $AFINAR_HOME/demo/<kind>-<UTC timestamp>."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(chosen or settings.home / "demo" / f"{kind}-{stamp}").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out, stamp

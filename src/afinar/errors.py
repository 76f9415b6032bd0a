"""Typed, user-facing errors.

Every failure a user can cause is one of these. Each says what is wrong, where (file, line,
field) and how to fix it; the CLI prints them without a traceback and the service maps them to
Bedrock's modelled exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


class AfinarError(Exception):
    """Base class. `hint` says what to do about it."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(AfinarError):
    """A setting, flag or hyperparameter is invalid."""


class ModelNotFoundError(AfinarError):
    """A model identifier matches nothing in the registry, on disk, or in the hub cache."""


class ModelLoadError(AfinarError):
    """A model was found but could not be loaded."""


class InvalidRequest(AfinarError):
    """A request field that is wrong (the message names it and says how to fix it)."""


class NotFound(AfinarError):
    """A named thing (job, custom model, knowledge base, ...) that does not exist."""

    exit_code = 3


class Conflict(AfinarError):
    """A request at odds with the current state: a name taken, a job still running."""


class QuotaExceeded(AfinarError):
    """A limit on what may wait or exist at once is reached."""


@dataclass(frozen=True)
class Issue:
    """One problem in a data file, at a line (1-based) or record, in a field."""

    message: str
    line: int | None = None
    field: str | None = None
    file: str | None = None
    code: str = "invalid"
    unit: str = "line"  # "line" for JSONL/CSV, "record" for JSON arrays and Parquet rows

    def where(self) -> str:
        loc = ":".join(p for p in (self.file, None if self.line is None
                                   else f"{self.unit} {self.line}") if p)
        if self.field:
            loc = f"{loc} field '{self.field}'" if loc else f"field '{self.field}'"
        return loc

    def __str__(self) -> str:
        return f"{self.where()}: {self.message}" if self.where() else self.message

    def to_dict(self) -> dict:
        return {"file": self.file, self.unit: self.line, "field": self.field,
                "code": self.code, "message": self.message}


class DataError(AfinarError):
    """A data file cannot be used. Carries every issue found, not only the first."""

    def __init__(self, message: str, issues: list[Issue] | None = None, *, hint: str | None = None):
        self.issues = list(issues or [])
        shown = "\n".join(f"  - {i}" for i in self.issues[:20])
        more = f"\n  ... and {len(self.issues) - 20} more" if len(self.issues) > 20 else ""
        full = message + (f"\n{shown}{more}" if self.issues else "")
        super().__init__(full, hint=hint)


class TrainingError(AfinarError):
    """Training could not run or diverged."""


class CheckpointError(AfinarError):
    """A checkpoint is missing, incomplete or belongs to another run."""

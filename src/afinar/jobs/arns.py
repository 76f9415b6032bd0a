"""ARN-like identifiers for jobs and custom models, in Bedrock's formats."""

from __future__ import annotations

import hashlib
import secrets

from afinar.config import Settings


def slug(s: str) -> str:
    out = "".join(c if c.isalnum() and c.isascii() else "-" for c in s.lower()).strip("-")
    return out[:63] or "model"


def short_id(seed: str | None = None) -> str:
    if seed is None:
        return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    return hashlib.sha256(seed.encode()).hexdigest()[:12]


class Arns:
    def __init__(self, settings: Settings):
        self.region, self.account = settings.region, settings.account_id

    def foundation(self, model_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}::foundation-model/{model_id}"

    def job(self, base_model_id: str, job_id: str) -> str:
        return (f"arn:aws:bedrock:{self.region}:{self.account}:model-customization-job/"
                f"afinar.{slug(base_model_id)}/{job_id}")

    def invocation_job(self, job_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account}:model-invocation-job/{job_id}"

    def evaluation_job(self, job_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account}:evaluation-job/{job_id}"

    def custom(self, base_model_id: str, model_id: str) -> str:
        return (f"arn:aws:bedrock:{self.region}:{self.account}:custom-model/"
                f"afinar.{slug(base_model_id)}/{model_id}")

"""ARN-like identifiers for jobs and custom models, in Bedrock's formats."""

from __future__ import annotations

from afinar.config import Settings
from afinar.models.ids import short_id, slug

__all__ = ["Arns", "short_id", "slug"]


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

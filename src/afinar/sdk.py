"""A Python SDK shaped like SageMaker's `HuggingFace` estimator, running on this machine:

    from afinar.sdk import HuggingFace
    est = HuggingFace(entry_point="train.py", source_dir="./scripts",
                      hyperparameters={"epochs": 3, "train_batch_size": 32,
                                       "model_name": "smollm2-135m-instruct"})
    est.fit({"train": "data/train.jsonl"})
    predictor = est.deploy()
    predictor.predict({"inputs": "Hola"})   # [{"generated_text": ...}]

`fit` runs the script under SageMaker's contract (afinar.training.script); `deploy` serves the
model it wrote: in this process by default, or through an afinar server (`endpoint_url`), where
`predict` calls Bedrock's InvokeModel with boto3.
"""

from __future__ import annotations

import json

from afinar.config import Settings, load_settings
from afinar.jobs.scripts import run_foreground
from afinar.training.script import ScriptFailed, ScriptResult


class HuggingFace:
    """`role`, `instance_type`, `instance_count` and the version arguments are accepted for
    compatibility with SageMaker code and otherwise ignored: training runs here."""

    def __init__(self, entry_point: str, source_dir: str | None = None,
                 hyperparameters: dict | None = None, role: str | None = None,
                 instance_type: str = "local", instance_count: int = 1,
                 base_job_name: str | None = None, output_path: str | None = None,
                 settings: Settings | None = None, **_compat):
        if instance_count != 1:
            from afinar.errors import ConfigError
            raise ConfigError("script mode runs on one host here (instance_count=1); use "
                              "accelerate/torchrun inside the script for several processes")
        self.entry_point, self.source_dir = entry_point, source_dir
        self.hyperparameters = dict(hyperparameters or {})
        self.base_job_name, self.output_path = base_job_name, output_path
        self.settings = settings or load_settings()
        self.latest_training_job: ScriptResult | None = None

    def fit(self, inputs: str | dict | None = None, job_name: str | None = None,
            wait: bool = True, logs: bool = True) -> ScriptResult:
        """Run the script; `inputs` is a path/URI (the `training` channel) or {channel: path}.
        Raises ScriptFailed (with the log's tail) if the script fails."""
        channels = {"training": inputs} if isinstance(inputs, str) else dict(inputs or {})
        if job_name is None and self.base_job_name:
            from datetime import UTC, datetime
            job_name = f"{self.base_job_name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        res = run_foreground(self.settings, self.entry_point, source_dir=self.source_dir,
                             hyperparameters=self.hyperparameters, inputs=channels,
                             name=job_name, output_dir=self.output_path,
                             stream=(lambda s: print(s, end="")) if logs else None)
        self.latest_training_job = res
        if res.status != "Completed":
            raise ScriptFailed(f"training job {res.name} failed: {res.failure_message}")
        return res

    @property
    def model_data(self) -> str | None:
        j = self.latest_training_job
        return str(j.model_dir) if j else None

    def deploy(self, initial_instance_count: int = 1, instance_type: str | None = None,
               endpoint_url: str | None = None, **_compat) -> Predictor:
        j = self.latest_training_job
        if j is None or j.status != "Completed":
            from afinar.errors import ConfigError
            raise ConfigError("nothing to deploy: call fit() first (and let it complete)")
        if not j.registered:
            from afinar.errors import ConfigError
            raise ConfigError(f"the script wrote no Hugging Face model to SM_MODEL_DIR "
                              f"({j.model_dir}): save_pretrained() the model and tokenizer there")
        return Predictor(j.name, self.settings, endpoint_url)


class Predictor:
    def __init__(self, model_name: str, settings: Settings, endpoint_url: str | None = None):
        self.model_name, self.settings, self.endpoint_url = model_name, settings, endpoint_url
        self._engine = None

    def predict(self, data) -> list[dict]:
        """`"text"`, or {"inputs": text | [texts], "parameters": {"max_new_tokens",
        "temperature"}} -> [{"generated_text": ...}] per input (the Hugging Face inference
        toolkit's shape)."""
        if isinstance(data, str):
            data = {"inputs": data}
        inputs = data.get("inputs")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        params = data.get("parameters") or {}
        max_tokens = int(params.get("max_new_tokens", 64))
        temperature = float(params.get("temperature", 0.0))
        if self.endpoint_url:
            return [self._remote(t, max_tokens, temperature) for t in texts]
        from afinar.inference.engine import Engine
        from afinar.inference.requests import GenRequest

        if self._engine is None:
            self._engine = Engine(self.settings)
        reqs = [self._engine.submit(GenRequest(model=self.model_name, messages=[
            {"role": "user", "content": t}], max_tokens=max_tokens, temperature=temperature))
            for t in texts]
        return [{"generated_text": r.result(timeout=600).text} for r in reqs]

    def _remote(self, text: str, max_tokens: int, temperature: float) -> dict:
        import boto3
        rt = boto3.client("bedrock-runtime", endpoint_url=self.endpoint_url,
                          region_name=self.settings.region, aws_access_key_id="afinar",
                          aws_secret_access_key="afinar")
        body = json.dumps({"messages": [{"role": "user", "content": text}],
                           "max_tokens": max_tokens, "temperature": temperature})
        out = json.loads(rt.invoke_model(modelId=self.model_name, body=body)["body"].read())
        return {"generated_text": out["output"]}

    def delete_endpoint(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

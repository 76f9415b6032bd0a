"""Distillation: a tiny teacher answers unlabelled prompts, a random student learns its mapping."""

from __future__ import annotations

import json

import pytest

from afinar.errors import ConfigError, DataError
from afinar.training.config import parse_train_config
from afinar.training.trainer import train

from conftest import COLORS, THINGS, mapping_rows, write_jsonl

# a mapping the base tokenizer's random model cannot guess: the teacher learns it first
SECRET = {t: COLORS[(i + 1) % 4] for i, t in enumerate(THINGS)}


def _prompts(n: int) -> list[dict]:
    return [{"prompt": f"Colour of {THINGS[i % 4]}?"} for i in range(n)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_model_dir):
    """A tiny model fine-tuned on SECRET (its own home: module-scoped)."""
    from afinar.config import Settings

    d = tmp_path_factory.mktemp("teacher")
    rows = [{"prompt": r["prompt"], "completion": SECRET[r["prompt"][10:-1]]}
            for r in mapping_rows(160)]
    cfg = parse_train_config({
        "train_data": str(write_jsonl(d / "t.jsonl", rows)), "base_model": str(tiny_model_dir),
        "output_dir": str(d / "run"), "name": "tiny-teacher", "method": "full", "epochs": 8,
        "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 0, "checkpoint_every": 0,
        "precision": "fp32", "validation_split": 0, "threads": 2})
    res = train(cfg, Settings(home=d / "home"))
    return res.model_dir


def _cfg(tmp_path, student, teacher, prompts, **kw):
    base = {"type": "distill", "teacher": str(teacher), "max_new_tokens": 8,
            "train_data": str(write_jsonl(tmp_path / "prompts.jsonl", prompts)),
            "base_model": str(student), "output_dir": str(tmp_path / "run"),
            "name": "tiny-student", "method": "full", "epochs": 8, "batch_size": 8,
            "learning_rate": 1e-2, "warmup_steps": 0, "checkpoint_every": 0,
            "precision": "fp32", "validation_split": 0, "threads": 2}
    return parse_train_config(base | kw)


def _answers(name: str, settings) -> list[str]:
    from afinar.inference.generate import generate, load

    prompts = [[{"role": "user", "content": f"Colour of {t}?"}] for t in THINGS]
    return generate(load(name, settings, precision="fp32"), prompts, max_new_tokens=4)


def test_the_student_learns_the_teachers_mapping(tmp_path, tiny_model_dir, teacher, settings):
    """Unlabelled prompts only: the teacher's answers are the data, kept with the run, and the
    random student ends up answering as the teacher does (the base cannot)."""
    assert _answers(str(teacher), settings) == [SECRET[t] for t in THINGS]
    res = train(_cfg(tmp_path, tiny_model_dir, teacher, _prompts(160)), settings)
    assert res.status == "completed"
    assert res.distillation["training"]["kept"] == 160, res.distillation
    data = [json.loads(x) for x in (tmp_path / "run" / "distillation" /
                                    "training_responses.jsonl").read_text().splitlines()]
    assert len(data) == 160 and data[0]["source_line"] == 1
    assert data[0]["messages"][-1] == {"role": "assistant", "content": SECRET["apple"]}
    assert _answers("tiny-student", settings) == [SECRET[t] for t in THINGS]


def test_a_stopped_teacher_phase_resumes_where_it_stopped(tmp_path, tiny_model_dir, teacher,
                                                          settings, monkeypatch):
    """Answers are written a window at a time: a stop keeps them, and the next run asks the
    teacher only for the rest. use_prompt_response keeps a record's own answer."""
    from afinar.training import distill

    monkeypatch.setattr(distill, "WINDOW", 8)
    prompts = _prompts(31) + [{"prompt": "Colour of sky?", "completion": "plaid"}]
    calls = {"n": 0}

    def stop_after_two_windows() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    from afinar.training.trainer import Trainer
    cfg = _cfg(tmp_path, tiny_model_dir, teacher, prompts, use_prompt_response=True, epochs=1)
    with pytest.raises(distill.Stopped, match="17 of 32 done"):
        Trainer(cfg, settings, should_stop=stop_after_two_windows).prepare()
    res = train(cfg, settings)
    d = res.distillation["training"]
    assert (d["kept"], d["from_records"]) == (32, 1), d
    lines = [json.loads(x)["source_line"] for x in (tmp_path / "run" / "distillation" /
             "training_responses.jsonl").read_text().splitlines()]
    assert sorted(lines) == list(range(1, 33))  # each prompt answered once
    assert lines[0] == 32  # the record's own answer is written first (no teacher needed)


def test_bad_distillation_inputs_fail_before_the_teacher_runs(tmp_path, tiny_model_dir,
                                                              settings):
    with pytest.raises(ConfigError, match="needs a teacher"):
        parse_train_config({"type": "distill", "train_data": "x.jsonl"})
    with pytest.raises(ConfigError, match="set type=distill"):
        parse_train_config({"teacher": "m", "train_data": "x.jsonl"})
    bad = _prompts(3) + [{"prompt": ""}, {"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": "x"},
                                                      {"role": "assistant", "content": "y"}]}]
    # the teacher does not exist: the data error must come first
    with pytest.raises(DataError) as e:
        train(_cfg(tmp_path, tiny_model_dir, tmp_path / "no-such-teacher", bad), settings)
    text = str(e.value) + "".join(i.where() + i.message for i in e.value.issues)
    assert "line 4" in text and "'prompt'" in text and "line 5" in text, text
    with pytest.raises(Exception, match="no-such-teacher"):
        train(_cfg(tmp_path, tiny_model_dir, tmp_path / "no-such-teacher", _prompts(4),
                   output_dir=str(tmp_path / "run2")), settings)


def _prompt_record(text: str):
    from afinar.data.prompts import PromptRecord

    return PromptRecord(1, [{"role": "user", "content": text}])


def test_teacher_endpoint_settings_name_the_wrong_field():
    from pydantic import ValidationError

    from afinar.config import TeacherEndpoint

    with pytest.raises(ValidationError, match="needs base_url"):
        TeacherEndpoint(model="m")
    with pytest.raises(ValidationError, match="api_key_env is for"):
        TeacherEndpoint(api="bedrock", model="m", api_key_env="K")
    with pytest.raises(ValidationError, match="region and profile are for"):
        TeacherEndpoint(base_url="http://h/v1", model="m", region="us-east-1")


def test_synthesize_writes_new_checked_examples(tmp_path, tiny_model_dir, capsys):
    """`afinar data synthesize`: the teacher's answers are constrained to the seeds' fields,
    every kept example passes the data check, none repeats a seed or another, and a second
    run continues the file. (A random tiny teacher writes nonsense that fits the schema: the
    test is of the pipeline, not of a teacher's quality.)"""
    from afinar.cli.main import main
    from afinar.data.check import check_file

    seeds = write_jsonl(tmp_path / "seeds.jsonl", mapping_rows(3))
    out = tmp_path / "synth.jsonl"
    argv = ["data", "synthesize", str(seeds), "--teacher", str(tiny_model_dir), "--out",
            str(out), "--per-call", "3", "--json"]
    assert main(argv + ["--n", "9"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kept"] == 9 and res["calls"] >= 3, res
    first = out.read_text().splitlines()
    assert main(argv + ["--n", "12"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 12 and lines[:9] == first
    rows = [json.loads(x) for x in lines]
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    keys = {json.dumps(r, sort_keys=True).lower() for r in rows + mapping_rows(3)}
    assert len(keys) == 15  # no duplicates, no seed copied
    assert check_file(out).ok


def test_synthesize_stops_when_the_teacher_repeats_itself(tmp_path, tiny_model_dir, settings):
    """Greedy answers to the two prompts 2 seeds make (in either order) repeat: duplicates are
    left out and the calls stop at their cap, short of N. Bad seeds fail before the teacher
    loads."""
    from pathlib import Path

    from afinar.inference.teachers import make_teacher
    from afinar.training.synthesize import synthesize

    seeds = write_jsonl(tmp_path / "seeds.jsonl", mapping_rows(2))  # 2 orders: 2 prompts
    res = synthesize(str(seeds), tmp_path / "s.jsonl", 8, lambda schema: make_teacher(
        str(tiny_model_dir), settings, 256, temperature=0.0, json_schema=schema),
        lambda ev: None, lambda: False, per_call=2, shots=2)
    assert res.kept <= 4 and res.left_out["duplicate"] > 0 and res.calls == 16, res
    bad = write_jsonl(tmp_path / "bad.jsonl", mapping_rows(2) + [{"prompt": "x"}])
    with pytest.raises(DataError) as e:
        synthesize(str(bad), tmp_path / "b.jsonl", 5, lambda s: Path("/nonexistent") / "x",
                   lambda ev: None, lambda: False)
    assert any(i.line == 3 and i.field == "completion" for i in e.value.issues)


def test_an_openai_compatible_or_bedrock_endpoint_as_the_teacher(
        tmp_path, tiny_model_dir, teacher, settings, monkeypatch):
    """A teacher registered in [teachers]: an OpenAI-compatible server and a Bedrock runtime
    (afinar's own server on loopback, serving the teacher model, is both) answer the prompts
    over HTTP, for distillation and for synthesis (response_format json_schema, or Converse's
    outputConfig.textFormat)."""
    import signal

    from afinar.config import TeacherEndpoint
    from afinar.inference.teachers import make_teacher
    from afinar.training.synthesize import synthesize
    from servers import Server

    srv = Server(tmp_path / "srv", teacher).start()
    try:
        remote = settings.model_copy(update={"teachers": {"remote": TeacherEndpoint(
            base_url=f"{srv.url}/v1", model="tiny", concurrency=4)}})
        res = train(_cfg(tmp_path, tiny_model_dir, "remote", _prompts(8), max_steps=1), remote)
        assert res.distillation["training"]["kept"] == 8
        data = [json.loads(x) for x in (tmp_path / "run" / "distillation" /
                                        "training_responses.jsonl").read_text().splitlines()]
        assert [d["messages"][-1]["content"] for d in data] == [SECRET[t] for t in THINGS] * 2
        seeds = write_jsonl(tmp_path / "seeds.jsonl", mapping_rows(3))
        syn = synthesize(str(seeds), tmp_path / "s.jsonl", 4, lambda schema: make_teacher(
            "remote", remote, 1024, temperature=1.0, json_schema=schema), lambda ev: None,
            lambda: False, per_call=2)
        assert syn.kept == 4 and not syn.left_out, syn

        for k, v in {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "test"}.items():
            monkeypatch.setenv(k, v)
        bedrock = settings.model_copy(update={"teachers": {"br": TeacherEndpoint(
            api="bedrock", base_url=srv.url, model="tiny", region="us-east-1",
            concurrency=4)}})
        res = train(_cfg(tmp_path, tiny_model_dir, "br", _prompts(8), max_steps=1,
                         output_dir=str(tmp_path / "run2")), bedrock)
        assert res.distillation["training"]["kept"] == 8
        data = [json.loads(x) for x in (tmp_path / "run2" / "distillation" /
                                        "training_responses.jsonl").read_text().splitlines()]
        assert [d["messages"][-1]["content"] for d in data] == [SECRET[t] for t in THINGS] * 2
        syn = synthesize(str(seeds), tmp_path / "s2.jsonl", 4, lambda schema: make_teacher(
            "br", bedrock, 1024, temperature=1.0, json_schema=schema), lambda ev: None,
            lambda: False, per_call=2)
        assert syn.kept == 4 and not syn.left_out, syn
        wrong = bedrock.model_copy(update={"teachers": {"br": TeacherEndpoint(
            api="bedrock", base_url=srv.url, model="no-such-model", region="us-east-1")}})
        got = make_teacher("br", wrong, 8).answer(
            [_prompt_record("Colour of sky?")])
        assert "teacher call failed" in got[0].problem and "no-such-model" in got[0].problem
    finally:
        srv.kill(signal.SIGTERM)
    bad = settings.model_copy(update={"teachers": {"remote": TeacherEndpoint(
        base_url="http://127.0.0.1:9/v1", model="x")}})
    with pytest.raises(DataError, match="no usable answer"):
        train(_cfg(tmp_path, tiny_model_dir, "remote", _prompts(4),
                   output_dir=str(tmp_path / "run3")), bad)

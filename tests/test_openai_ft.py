"""OpenAI's Files and fine-tuning API, driven by the unmodified `openai` client against a real
server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import signal
import time

import openai
import pytest

from servers import Server

from conftest import COLORS, THINGS, mapping_rows


def _chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["completion"]}]}
            for r in mapping_rows(n)]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _until(client, job_id: str, cond, timeout: float = 900):
    """Poll the job until cond(job) (generous: the machine may be busy)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = client.fine_tuning.jobs.retrieve(job_id)
        if cond(j):
            return j
        assert j.status not in ("failed",) or cond(j), j.error
        time.sleep(0.5)
    raise TimeoutError(f"{job_id}: {j.status}")


@pytest.fixture
def srv(tmp_path, tiny_model_dir):
    s = Server(tmp_path / "srv", tiny_model_dir).start()
    yield s
    s.kill(signal.SIGTERM)


def test_supervised_job_events_checkpoints_and_the_ft_model(srv):
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
    f = client.files.create(file=("colours.jsonl", io.BytesIO(_jsonl(_chat_rows(64)))),
                            purpose="fine-tune")
    assert f.purpose == "fine-tune" and f.bytes > 0 and f.status == "processed"
    assert client.files.retrieve(f.id).filename == "colours.jsonl"
    assert client.files.content(f.id).read() == _jsonl(_chat_rows(64))
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]

    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="colours",
                                         seed=7, metadata={"team": "a"})
    assert job.status in ("queued", "validating_files", "running") and job.seed == 7
    assert job.hyperparameters.n_epochs == "auto"
    done = _until(client, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:afinar:colours:{job.id[6:]}"
    assert isinstance(done.hyperparameters.n_epochs, int) and done.trained_tokens > 0
    csv_text = client.files.content(done.result_files[0]).read().decode()
    assert csv_text.startswith("step,train_loss,train_accuracy") and \
        len(csv_text.splitlines()) > 10

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {"step", "train_loss", "train_mean_token_accuracy"} <= set(
        metrics[0].data)
    assert events[0].created_at >= events[-1].created_at  # newest first
    assert any("custom model" in e.message for e in events if e.type == "message")

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(ckpts) == 2 and ckpts[0].step_number > ckpts[1].step_number
    assert ckpts[0].fine_tuned_model_checkpoint.endswith(f":ckpt-step-{ckpts[0].step_number}")
    assert "train_loss" in ckpts[0].metrics.model_dump(exclude_none=True)

    ask = [{"role": "user", "content": f"Colour of {THINGS[0]}?"}]
    for model in (done.fine_tuned_model, ckpts[1].fine_tuned_model_checkpoint):
        out = client.chat.completions.create(model=model, messages=ask, max_tokens=4)
        assert out.choices[0].message.content is not None
    listed = [m.id for m in client.models.list()]
    assert done.fine_tuned_model in listed
    assert client.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, messages=ask)

    # the same job, seen through Bedrock's API and paged/filtered through OpenAI's
    bedrock = srv.client()
    assert bedrock.get_model_customization_job(jobIdentifier=job.id)["status"] == "Completed"
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "b"}).data == []


def test_bad_files_and_requests_are_refused_with_the_field(srv):
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
    bad = _jsonl(_chat_rows(4)) + b'{"messages": [{"role": "user"}]}\n{"oops"\n'
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    assert "line 5" in str(e.value) and "line 6" in str(e.value), e.value
    good = client.files.create(file=("ok.jsonl", io.BytesIO(_jsonl(_chat_rows(8)))),
                               purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=good.id,
                                       method={"type": "dpo"})
    assert e.value.body["param"] == "training_file" and "preference" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=good.id)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=good.id,
                                       hyperparameters={"n_epochs": 99})
    assert "epochs" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=good.id, method={
            "type": "reinforcement", "reinforcement": {"grader": {
                "type": "python", "name": "g", "source": "def grade(s, i): return 1"}}})
    assert "python" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert client.files.delete(good.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(good.id)


def test_cancel_pause_resume_dpo_and_paging(srv):
    """A long job is paused and resumed (it continues from its checkpoint and succeeds); a
    job queued behind it and a running one are cancelled; a DPO job trains on preference
    pairs; jobs page."""
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
    f = client.files.create(file=("c.jsonl", io.BytesIO(_jsonl(_chat_rows(200)))),
                            purpose="fine-tune")
    long = client.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, method={"type": "supervised", "supervised": {
            "hyperparameters": {"n_epochs": 4, "batch_size": 1}}})
    queued = client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    _until(client, long.id, lambda j: j.status == "running" and any(
        e.type == "metrics" for e in client.fine_tuning.jobs.list_events(long.id).data))
    client.fine_tuning.jobs.pause(long.id)
    paused = _until(client, long.id, lambda j: j.status in ("paused", "succeeded"))
    assert paused.status == "paused"
    client.fine_tuning.jobs.resume(long.id)
    done = _until(client, long.id, lambda j: j.status in ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    running = client.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, method={"type": "supervised", "supervised": {
            "hyperparameters": {"n_epochs": 4, "batch_size": 1}}})
    _until(client, running.id, lambda j: j.status == "running" and any(
        e.type == "metrics" for e in client.fine_tuning.jobs.list_events(running.id).data))
    assert client.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    # the Bedrock view of the same job ends Stopped
    _until(client, running.id, lambda j: srv.client().get_model_customization_job(
        jobIdentifier=running.id)["status"] == "Stopped")
    every = list(client.fine_tuning.jobs.list_events(long.id, limit=100))  # pages on `after`
    assert len({e.id for e in every}) == len(every) > 100
    assert any("resume requested" in e.message for e in every)

    pairs = [{"input": {"messages": [{"role": "user", "content": f"Colour of {t}?"}]},
              "preferred_output": [{"role": "assistant", "content": c}],
              "non_preferred_output": [{"role": "assistant", "content": COLORS[(i + 1) % 4]}]}
             for i, (t, c) in enumerate(zip(THINGS * 4, COLORS * 4, strict=True))]
    p = client.files.create(file=("p.jsonl", io.BytesIO(_jsonl(pairs))), purpose="fine-tune")
    dpo = client.fine_tuning.jobs.create(model="tiny", training_file=p.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
    done = _until(client, dpo.id, lambda j: j.status in ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2

    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [dpo.id, running.id] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=running.id)
    assert [j.id for j in rest.data] == [queued.id, long.id] and not rest.has_more


def test_cookbook_code_runs_with_only_base_url_changed(tmp_path, tiny_model_dir):
    """OpenAI's fine-tuning cookbook flow, unchanged but for base_url: the model id it names
    (gpt-4o-mini-2024-07-18) is an alias of a local model in the server's settings. Then a
    reinforcement job with an OpenAI string_check grader object."""
    srv = Server(tmp_path / "srv", tiny_model_dir)
    with (srv.home / "afinar.toml").open("a") as f:
        f.write(f'"gpt-4o-mini-2024-07-18" = "{tiny_model_dir}"\n')
    srv.start()
    try:
        # --- from the cookbook (How to fine-tune chat models), base_url added -------------
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-unused")
        (tmp_path / "training.jsonl").write_bytes(_jsonl(_chat_rows(48)))
        with open(tmp_path / "training.jsonl", "rb") as fd:
            training_file_id = client.files.create(file=fd, purpose="fine-tune").id
        response = client.fine_tuning.jobs.create(
            training_file=training_file_id, model="gpt-4o-mini-2024-07-18",
            suffix="recipe-ner")
        job_id = response.id
        response = _until(client, job_id, lambda j: j.status in ("succeeded", "failed"))
        response = client.fine_tuning.jobs.list_events(job_id)
        events = response.data
        events.reverse()
        assert events and all(e.message for e in events)
        response = client.fine_tuning.jobs.retrieve(job_id)
        fine_tuned_model_id = response.fine_tuned_model
        assert fine_tuned_model_id.startswith("ft:gpt-4o-mini-2024-07-18:afinar:recipe-ner:")
        response = client.chat.completions.create(
            model=fine_tuned_model_id, messages=[{"role": "user", "content": "Colour of sky?"}],
            temperature=0, max_tokens=8)
        assert response.choices[0].message.content is not None
        # --- reinforcement fine-tuning with a grader object -----------------------------------
        prompts = [{"messages": [{"role": "user", "content": f"Colour of {THINGS[i % 4]}?"}],
                    "reference_answer": COLORS[i % 4]} for i in range(8)]
        f = client.files.create(file=("p.jsonl", io.BytesIO(_jsonl(prompts))),
                                purpose="fine-tune")
        grader = {"type": "string_check", "name": "colour", "operation": "eq",
                  "input": "{{sample.output_text}}", "reference": "{{item.reference_answer}}"}
        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=f.id, method={"type": "reinforcement", "reinforcement": {
                "grader": grader, "hyperparameters": {"n_epochs": 1, "batch_size": 8}}})
        done = _until(client, job.id, lambda j: j.status in ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.method.reinforcement.grader.name == "colour"
        rewards = [e.data["mean_reward"] for e in client.fine_tuning.jobs.list_events(
            job.id, limit=100).data if e.type == "metrics"]
        assert len(rewards) == 1 and 0 <= rewards[0] <= 1
    finally:
        srv.kill(signal.SIGTERM)

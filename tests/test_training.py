"""The trainer on tiny models built in code: learning happens, resume is exact, outputs are in
Bedrock's layout and loadable without afinar."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from afinar.errors import CheckpointError, ConfigError, DataError, ModelNotFoundError, TrainingError
from afinar.training.config import BEDROCK_ALIASES, parse_train_config
from afinar.training.trainer import Trainer, train

from conftest import COLORS, THINGS, mapping_rows, write_jsonl


def _cfg(tmp_path, model, rows=64, **kw):
    data = write_jsonl(tmp_path / "train.jsonl", mapping_rows(rows))
    base = {"train_data": str(data), "base_model": str(model), "output_dir": str(tmp_path / "run"),
            "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 0,
            "checkpoint_every": 0, "name": "tiny-run", "threads": 2}
    for alias, field in BEDROCK_ALIASES.items():
        if alias in kw:
            base.pop(field)
    base.update(kw)
    return parse_train_config(base)


def test_lora_loss_falls_only_adapters_change(tmp_path, tiny_model_dir, settings):
    cfg = _cfg(tmp_path, tiny_model_dir, epochs=3, learning_rate=5e-2, validation_data=str(
        write_jsonl(tmp_path / "val.jsonl", mapping_rows(8))))
    tr = Trainer(cfg, settings).prepare()
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    res = tr.fit()
    after = dict(tr.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert res.status == "completed" and res.steps == 24
    assert res.train_loss < res.first_loss - 0.3  # random tiny base: logits start uniform
    assert res.validation["validation_loss"] < res.first_loss


def test_full_finetune_learns_mapping_exactly(tmp_path, tiny_model_dir, settings):
    from afinar.inference.generate import generate, load

    prompts = [[{"role": "user", "content": f"Colour of {t}?"}] for t in THINGS]
    base = generate(load(str(tiny_model_dir), settings), prompts, max_new_tokens=4)
    assert base != COLORS  # a random model cannot answer
    # fp32 throughout: on a CPU with fast bf16, autocast training and bf16 greedy decoding of a
    # 64-wide random model land within bf16 rounding of the answer (measured: 2 of 4 right)
    # validation_split 0: every example trains (a hold-out of 16 left one colour unlearnt)
    cfg = _cfg(tmp_path, tiny_model_dir, rows=160, method="full", epochs=8, learning_rate=1e-2,
               precision="fp32", validation_split=0)
    res = train(cfg, settings)
    tuned = generate(load("tiny-run", settings, precision="fp32"), prompts, max_new_tokens=4)
    assert tuned == COLORS, (res, tuned)


def _weights(run_dir):
    from safetensors.torch import load_file
    ck = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(str(ck / "trainable.safetensors"))


def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, settings):
    kw = {"epochs": 2, "checkpoint_every": 3, "lora_dropout": 0.2, "batch_size": 6}
    a = train(_cfg(tmp_path / "a", tiny_model_dir, **kw), settings)
    calls = {"n": 0}

    def stop_at_5():
        calls["n"] += 1
        return calls["n"] == 5

    cfg_b = _cfg(tmp_path / "b", tiny_model_dir, **kw)
    b1 = train(cfg_b, settings, should_stop=stop_at_5)
    assert b1.status == "stopped" and b1.steps == 5
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-000005").exists()
    b2 = train(cfg_b, settings, resume=True)
    assert b2.status == "completed" and b2.steps == a.steps
    assert b2.train_loss == pytest.approx(a.train_loss, rel=1e-5)
    wa, wb = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    rows_a = list(csv.reader(open(tmp_path / "a/run/training_artifacts/"
                                   "step_wise_training_metrics.csv")))
    rows_b = list(csv.reader(open(tmp_path / "b/run/training_artifacts/"
                                   "step_wise_training_metrics.csv")))
    assert [r[0] for r in rows_a] == [r[0] for r in rows_b]  # no duplicated steps after resume
    for ra, rb in zip(rows_a[1:], rows_b[1:], strict=True):
        assert float(ra[2]) == pytest.approx(float(rb[2]), rel=1e-4)


@pytest.mark.parametrize("name", ["../../x", "a/b", "a" * 300, "", ".hidden", "two words"])
def test_bad_model_names_refused_before_any_work(tmp_path, tiny_model_dir, settings, name):
    from afinar.errors import ConfigError
    from afinar.models.registry import custom_model_record

    with pytest.raises(ConfigError, match="'name': must be 1-63 letters"):
        train(_cfg(tmp_path, tiny_model_dir, name=name), settings)
    assert not (tmp_path / "run").exists() and not (tmp_path.parent / "x").exists()
    (settings.home / "x").mkdir(parents=True)
    (settings.home / "x" / "fake.json").write_text('{"name": "fake"}')
    assert custom_model_record(settings, "../x/fake") is None  # a name is never a path


class _Planted:
    """A pickle that runs code when loaded (what a tampered checkpoint could hold)."""

    def __init__(self, mark):
        self.mark = str(mark)

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.mark),))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, tiny_model_dir, settings):
    cfg = _cfg(tmp_path, tiny_model_dir, epochs=1, checkpoint_every=1)
    calls = {"n": 0}

    def stop_at_2():
        calls["n"] += 1
        return calls["n"] == 2

    assert train(cfg, settings, should_stop=stop_at_2).status == "stopped"
    ck = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    mark = tmp_path / "code-ran"
    torch.save({"optimizer": _Planted(mark)}, ck / "optim.pt")
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        train(cfg, settings, resume=True)
    assert not mark.exists()


def test_outputs_bedrock_layout_and_plain_loading(tmp_path, tiny_model_dir, settings):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    val = write_jsonl(tmp_path / "val.jsonl", mapping_rows(8))
    res = train(_cfg(tmp_path, tiny_model_dir, validation_data=str(val), checkpoint_every=4),
                settings)
    out = res.output_dir
    rows = list(csv.DictReader(open(out / "training_artifacts/step_wise_training_metrics.csv")))
    assert list(rows[0]) == ["step_number", "epoch_number", "training_loss", "perplexity"]
    assert [int(r["step_number"]) for r in rows] == list(range(res.steps))
    vrows = list(csv.DictReader(open(out / "validation_artifacts/post_fine_tuning_validation/"
                                     "validation_metrics.csv")))
    assert list(vrows[0]) == ["step_number", "epoch_number", "validation_loss", "perplexity"]
    assert len(vrows) == res.steps // 4 + 1  # every checkpoint and the end
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    tok = AutoTokenizer.from_pretrained(str(out / "merged"))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, atol=1e-4,
                                   rtol=1e-4)
    card = (out / "README.md").read_text()
    assert "tiny-run" in card and "validation loss" in card
    rec = json.loads((settings.custom_models_dir / "tiny-run.json").read_text())
    assert rec["lineage"][-1] == "tiny-run" and rec["base_path"] == str(tiny_model_dir)


def test_fine_tune_on_top_of_custom_model_records_lineage(tmp_path, tiny_model_dir, settings):
    train(_cfg(tmp_path / "1", tiny_model_dir, epochs=1, name="first"), settings)
    res = train(_cfg(tmp_path / "2", "first", epochs=1, name="second"), settings)
    rec = json.loads((res.output_dir / "afinar_model.json").read_text())
    assert rec["lineage"] == [str(tiny_model_dir), "first", "second"]


@pytest.mark.parametrize("bad,exc,match", [
    ({"epochCount": 11}, ConfigError, "epochs \\(epochCount\\)"),
    ({"learningRate": "abc"}, ConfigError, "learning_rate \\(learningRate\\)"),
    ({"batchSize": 0}, ConfigError, "batch_size"),
    ({"learningRateWarmupSteps": 300}, ConfigError, "warmup_steps"),
    ({"colour": "red"}, ConfigError, "unknown setting 'colour'"),
    ({"method": "qlora"}, ConfigError, "method"),
])
def test_bad_hyperparameters(tmp_path, tiny_model_dir, bad, exc, match):
    with pytest.raises(exc, match=match):
        _cfg(tmp_path, tiny_model_dir, **bad)


def test_bedrock_string_hyperparameters_accepted(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, epochCount="3", batchSize="4", learningRate="0.00001",
               learningRateWarmupSteps="2")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_steps) == (3, 4, 1e-5, 2)


def test_bad_runs_fail_before_training(tmp_path, tiny_model_dir, settings):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        train(_cfg(tmp_path, "no-such-model"), settings)
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "t", "label": "a"}] * 4)
    with pytest.raises(DataError, match="classification"):
        train(_cfg(tmp_path, tiny_model_dir, train_data=str(cls)), settings)
    bad = write_jsonl(tmp_path / "bad.jsonl", mapping_rows(8) + [{"prompt": "x"}])
    with pytest.raises(DataError, match="line 9"):
        train(_cfg(tmp_path, tiny_model_dir, train_data=str(bad)), settings)
    assert not (tmp_path / "run").exists()  # nothing was started
    res = train(_cfg(tmp_path, tiny_model_dir, train_data=str(bad), skip_invalid=True,
                     epochs=1), settings)
    assert res.status == "completed"
    with pytest.raises(TrainingError, match="already holds a run"):
        train(_cfg(tmp_path, tiny_model_dir), settings)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_cfg(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "empty")), settings,
              resume=True)
    with pytest.raises(CheckpointError, match="other settings"):
        train(_cfg(tmp_path, tiny_model_dir, train_data=str(bad), skip_invalid=True, epochs=2),
              settings, resume=True)
    # an answer longer than max_length alone: refused before training, naming the lines
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "Say it", "completion": " ".join(
        COLORS * 6)}] * 4)
    with pytest.raises(DataError, match="max-length") as e:
        train(_cfg(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "x"), max_length=16,
                   train_data=str(long)), settings)
    assert "every answer is longer than max_length=16" in str(e.value)


def test_max_length_auto_covers_the_data_and_cuts_prompts_not_answers(
        tmp_path, settings, tokenizer_dir, tokenizer):
    """auto: the longest example decides the length (no flag needed for 700-token tool
    examples); a given length shorter than an example cuts the prompt's middle and keeps every
    answer token; an example whose answer alone is longer is left out and named."""
    from afinar.data.length import choose_max_length, fit
    from afinar.data.schema import Example
    from afinar.data.tokenize import IGNORE_INDEX, encode_example

    long_prompt = "Context: " + "the quick brown fox jumps over the lazy dog. " * 60
    rows = [{"prompt": f"{long_prompt}\nColour of {t}?", "completion": c}
            for t, c in zip(THINGS * 8, COLORS * 8, strict=True)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    from afinar.models.tiny import make_tiny_model
    model = make_tiny_model(tmp_path / "tiny2k", tokenizer_dir, hidden_size=32, num_layers=2,
                            num_heads=2, max_position_embeddings=2048)
    cfg = _cfg(tmp_path, model, train_data=str(data), epochs=1, max_length="auto")
    res = train(cfg, settings)
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    chosen = inputs["auto"]["max_length"]
    n = len(encode_example(tokenizer, Example(1, "prompt_completion", [
        {"role": "user", "content": rows[0]["prompt"]},
        {"role": "assistant", "content": rows[0]["completion"]}]), 10**9))
    assert n > 512 and chosen["value"] >= n and chosen["value"] % 64 == 0
    assert "covers all 32" in chosen["reason"] and res.status == "completed"

    # a length shorter than the example: the answer survives whole, the prompt's start too
    ex = Example(3, "messages", [{"role": "system", "content": "You answer with a colour."},
                                 {"role": "user", "content": long_prompt},
                                 {"role": "assistant", "content": "red and green"}])
    enc = encode_example(tokenizer, ex, 10**9)
    got, how = fit(enc, 64)
    assert how == "prompt_cut" and len(got.input_ids) == 64
    answer = [t for t in enc.labels if t != IGNORE_INDEX]
    assert [t for t in got.labels if t != IGNORE_INDEX] == answer
    assert got.input_ids[:8] == enc.input_ids[:8]  # the system turn's start is kept
    assert got.input_ids[-len(answer):] == enc.input_ids[-len(answer):]
    _, how = fit(enc, 4)
    assert how == "dropped"
    # auto within a cap: the share covered is reported
    c = choose_max_length([100] * 9 + [5000], context=2048)
    assert c.max_length == 2048 and c.covered == 0.9 and "90.0%" in c.reason
    # the context of the tiny model used at first (512) caps auto, and says so
    c = choose_max_length([n], context=512)
    assert c.max_length == 512 and "the model's context" in c.reason


def test_loss_mask_covers_only_the_answer(tokenizer):
    from afinar.data.schema import Example
    from afinar.data.tokenize import IGNORE_INDEX, encode_example

    ex = Example(1, "messages", [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hola"},
                                 {"role": "assistant", "content": "Buenos días"},
                                 {"role": "user", "content": "Y?"},
                                 {"role": "assistant", "content": "Adiós"}])
    enc = encode_example(tokenizer, ex, 512)
    spans, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels, strict=True):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            spans.append(tokenizer.decode(cur))
            cur = []
    if cur:
        spans.append(tokenizer.decode(cur))
    assert [s.strip() for s in spans] == ["Buenos días<|im_end|>", "Adiós<|im_end|>"]


def test_packed_batch_equals_padded_batch(tmp_path, tiny_model_dir, settings):
    """Packing must keep examples apart: the same batch packed in one row or padded gives the
    same loss, count and accuracy; a packed run learns as well."""
    from afinar.training.batching import collate, collate_packed

    rows = [{"prompt": r["prompt"] + " please" * (i % 5), "completion": r["completion"]}
            for i, r in enumerate(mapping_rows(64))]
    data = write_jsonl(tmp_path / "varied.jsonl", rows)
    tr = Trainer(_cfg(tmp_path, tiny_model_dir, grouping="packed", train_data=str(data)),
                 settings).prepare()
    items = tr.train.encoded[:6]
    padded = collate(items, tr.tokenizer.pad_token_id)
    packed = collate_packed(items)
    assert padded["attention_mask"] is not None  # lengths differ: the padded batch needs a mask
    assert packed["input_ids"].shape == (1, sum(len(x) for x in items))
    with torch.no_grad():
        a = tr.loss_mod(padded["input_ids"], padded["labels"], padded["attention_mask"])
        b = tr.loss_mod(packed["input_ids"], packed["labels"], None, packed["position_ids"])
    assert int(a[1]) == int(b[1]) and int(a[2]) == int(b[2])
    assert float(a[0]) == pytest.approx(float(b[0]), rel=1e-4)
    res = tr.fit()
    assert res.train_loss < res.first_loss - 0.3


def test_hold_out_keep_best_and_early_stopping(tmp_path, tiny_model_dir, settings):
    """No validation file: a seeded share of the training data is held out (and said so);
    the output keeps the best validation's weights; early stopping ends a run whose
    validations stop improving."""
    import math

    # a learning rate high enough that validation loss goes up and down
    cfg = _cfg(tmp_path, tiny_model_dir, rows=120, epochs=3, learning_rate=0.3, eval_every=1,
               precision="fp32")
    tr = Trainer(cfg, settings).prepare()
    assert len(tr.valid.encoded) == 12 and len(tr.train.encoded) == 108
    assert any("held out 12 of 120 training examples" in w for w in tr.warnings)
    res = tr.fit()
    vcsv = tmp_path / "run" / "validation_artifacts" / "post_fine_tuning_validation" / \
        "validation_metrics.csv"
    with vcsv.open() as f:
        losses = {int(r["step_number"]): float(r["validation_loss"]) for r in csv.DictReader(f)}
    best_step = min(losses, key=losses.get)
    assert best_step != max(losses), losses  # the last step is not the best one here
    assert res.best_step == best_step and math.isclose(res.validation["validation_loss"],
                                                       losses[best_step], rel_tol=1e-5)
    assert any(f"kept the weights of step {best_step}" in w for w in res.warnings)
    # the weights in the model are the best step's: validating them again gives its loss
    assert math.isclose(tr.validate()["validation_loss"], losses[best_step], rel_tol=1e-5)

    # early stopping: a threshold no validation can beat stops after `patience` of them
    cfg = _cfg(tmp_path / "es", tiny_model_dir, rows=120, epochs=3, eval_every=2,
               early_stopping_patience=2, early_stopping_threshold=10.0,
               output_dir=str(tmp_path / "es" / "run"))
    res = train(cfg, settings)
    assert res.early_stopped and res.status == "completed" and res.steps == 6 < res.total_steps
    assert any("early stopping at step 6" in w for w in res.warnings)
    # Bedrock's names for them
    assert parse_train_config({"train_data": "x.jsonl", "earlyStoppingPatience": 3,
                               "earlyStoppingThreshold": 0.01}).early_stopping_patience == 3


def test_structured_answers_are_scored_by_generation_during_validation(tmp_path, tiny_model_dir,
                                                                       settings):
    """Where the answers are JSON, validation also generates answers for a sample and reports
    their exact match; the kept weights are those of the best exact match."""
    rows = [{"messages": [{"role": "user", "content": f"Thing {t}?"},
                          {"role": "assistant", "content": json.dumps({"colour": c})}]}
            for t, c in zip(THINGS * 30, COLORS * 30, strict=True)]
    data = write_jsonl(tmp_path / "json.jsonl", rows)
    cfg = parse_train_config({"train_data": str(data), "base_model": str(tiny_model_dir),
                              "output_dir": str(tmp_path / "run"), "name": "json-run",
                              "method": "full", "epochs": 8, "learning_rate": 1e-2,
                              "eval_every": 10, "checkpoint_every": 0, "precision": "fp32"})
    tr = Trainer(cfg, settings).prepare()
    assert len(tr.gen_sample) == 12  # the hold-out (12 of 120), all JSON answers
    first = tr.validate()["validation_exact_match"]
    seen = []
    tr.progress = lambda ev: seen.append(ev.metrics["validation_exact_match"]) \
        if ev.stage == "validate" else None
    res = tr.fit()
    kept = res.validation["validation_exact_match"]
    assert first == 0.0 and kept >= 0.75 and kept == max(seen), (res.validation, seen)
    tr.model.eval()
    assert tr._sample_exact_match() == kept  # the weights in the model are the kept ones
    # short plain answers (labels, names) are scored the same way ...
    tr2 = Trainer(_cfg(tmp_path / "plain", tiny_model_dir, rows=120,
                       output_dir=str(tmp_path / "plain" / "run")), settings).prepare()
    assert len(tr2.gen_sample) == 12 and "validation_exact_match" in tr2.validate()
    # ... long free-text answers are not: no generation during validation
    long_rows = [{"prompt": f"Tell me about {t}.",
                  "completion": " ".join([t, c] * 80)}
                 for t, c in zip(THINGS * 30, COLORS * 30, strict=True)]
    tr3 = Trainer(parse_train_config({
        "train_data": str(write_jsonl(tmp_path / "long.jsonl", long_rows)),
        "base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "long" / "run"),
        "name": "long-run", "epochs": 1, "checkpoint_every": 0}), settings).prepare()
    assert tr3.gen_sample == [] and "validation_exact_match" not in tr3.validate()


def test_auto_hyperparameters_follow_the_data_and_model(tmp_path):
    """The rules of training/auto.py: what each data/model size gets, with a reason; explicit
    values (afinar's or Bedrock's names) are never replaced."""
    from afinar.training.auto import TARGET_STEPS, DataStats, resolve

    def chosen(n, params=135e6, **kw):
        cfg = parse_train_config({"train_data": "x.jsonl", **kw})
        return resolve(cfg, DataStats(n, 60.0), params)

    cfg, auto = chosen(360)  # the suite's size: 45 steps per epoch
    assert (cfg.batch_size, cfg.epochs, cfg.lora_r, cfg.lora_alpha) == (8, 2, 16, 32)
    assert cfg.epochs * 45 >= TARGET_STEPS > (cfg.epochs - 1) * 45 and cfg.lora_layers is None
    assert cfg.learning_rate == 1e-3 and all(v["reason"] for v in auto.values())
    assert chosen(400)[0].epochs == 2  # the demo's size
    cfg, _ = chosen(30000, params=7e9)
    assert (cfg.batch_size, cfg.epochs) == (32, 1) and cfg.learning_rate == 1.4e-4
    cfg, _ = chosen(5000)
    assert (cfg.batch_size, cfg.epochs) == (16, 1)
    cfg, auto = resolve(parse_train_config({"train_data": "x.jsonl"}), DataStats(360, 3000.0),
                        135e6)  # long examples: a smaller batch, and more epochs for the steps
    assert cfg.batch_size == 2 and "3000 tokens" in auto["batch_size"]["reason"]
    cfg, _ = chosen(20, params=None)  # tiny data: capped epochs; unknown size: a safe rate
    assert cfg.epochs == 5 and cfg.learning_rate == 2e-4
    cfg, auto = chosen(360, method="full")
    assert cfg.learning_rate == 2e-5 and "lora_r" not in auto
    assert chosen(360, type="cpt")[0].epochs == 1
    # explicit values win, under either name, and are not reported as chosen
    cfg, auto = chosen(360, epochCount="3", learningRate="0.0005", lora_layers=0, lora_r=8)
    assert (cfg.epochs, cfg.learning_rate, cfg.lora_layers, cfg.lora_r, cfg.lora_alpha) == \
        (3, 5e-4, None, 8, 16)
    assert set(auto) == {"batch_size", "lora_alpha"}
    with pytest.raises(ConfigError, match='epochs .*must be an integer or "auto"'):
        parse_train_config({"train_data": "x.jsonl", "epochs": "many"})


def test_model_parameters_estimate(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from afinar.training.auto import model_parameters

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir)).parameters())
    assert abs(model_parameters(tiny_model_dir) - real) / real < 0.05


def test_auto_choices_are_printed_and_recorded(tmp_path, tiny_model_dir, settings, capsys):
    from afinar.cli.main import main

    data = write_jsonl(tmp_path / "train.jsonl", mapping_rows(120))
    rc = main(["train", "--train-data", str(data), "--base-model", str(tiny_model_dir),
               "--output-dir", str(tmp_path / "run"), "--name", "auto-run", "--epochs",
               "auto", "--max-steps", "3", "--threads", "2", "--json"])
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    auto = res["auto_hyperparameters"]
    assert rc == 0 and res["steps"] == 3
    # 108 examples after the hold-out of 12: 14 batches of 8 per epoch, 5 epochs at most
    assert auto["batch_size"]["value"] == 8 and auto["epochs"]["value"] == 5
    assert "14 steps per epoch" in auto["epochs"]["reason"]
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert inputs["auto"] == auto and inputs["config"]["epochs"] == 5
    record = json.loads((tmp_path / "run" / "afinar_model.json").read_text())
    assert record["auto_hyperparameters"] == auto
    assert record["hyperparameters"]["learning_rate"] == auto["learning_rate"]["value"]
    assert main(["train", "--train-data", str(data), "--epochs", "many"]) != 0
    assert 'epochs (epochCount)\': must be an integer or "auto"' in capsys.readouterr().err


def test_qlora_trains_adapters_on_a_4bit_base(tmp_path, tiny_model_dir, settings, monkeypatch):
    """--quantize 4bit: the frozen base is NF4 (bitsandbytes' Linear4bit, on the CPU here), only
    the LoRA adapters train, the loss falls, and the merged export is a plain full-precision
    model. Without bitsandbytes the run fails before reading data, saying what to install."""
    import sys

    import bitsandbytes as bnb

    cfg = _cfg(tmp_path, tiny_model_dir, epochs=3, learning_rate=5e-2, quantize="4bit",
               precision="fp32")
    tr = Trainer(cfg, settings).prepare()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in tr.model.modules())
    res = tr.fit()
    assert res.status == "completed" and res.train_loss < res.first_loss - 0.3, res
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(str(res.model_dir))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    with pytest.raises(ConfigError, match="set method=lora"):
        _cfg(tmp_path, tiny_model_dir, quantize="4bit", method="full")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(TrainingError, match="needs bitsandbytes"):
        Trainer(_cfg(tmp_path / "b", tiny_model_dir, quantize="4bit"), settings).prepare()

"""Continuous batching in the embedded engine: requests join and leave a running batch between
decoding steps, and what each gets is what it would get alone.

All on the tiny random model in fp32 (greedy outputs of a batch equal single-request outputs
exactly in fp32; bf16 reductions change with the batch shape)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture
def engine(settings):
    from afinar.inference.engine import Engine

    e = Engine(settings, precision="fp32", batch_window_ms=1, prefill_chunk=24)
    yield e
    e.close()


def _ask(engine, model, text, n, **kw):
    from afinar.inference.requests import GenRequest

    return engine.submit(GenRequest(model=str(model), max_tokens=n,
                                    messages=[{"role": "user", "content": text}], **kw))


def _alone(engine, model, text, n, **kw):
    return _ask(engine, model, text, n, **kw).result(timeout=300).text


def _wait(cond, what: str, timeout: float = 300) -> None:
    import time

    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two LoRA adapters of the tiny model whose B matrices are not zero (each changes the
    outputs its own way)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = []
    for i in range(2):
        torch.manual_seed(100 + i)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           LoraConfig(r=4 + 4 * i, lora_alpha=16, task_type="CAUSAL_LM",
                                      target_modules="all-linear"))
        for name, p in m.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        d = tmp_path_factory.mktemp(f"lora{i}") / "adapter"
        m.save_pretrained(str(d))
        dirs.append(d)
    return dirs


PROMPTS = [("Hi", 9), ("Tell me a long story about the sea and its ships. " * 3, 23),
           ("What is 2+2?", 5), ("Name three colours, please.", 31), ("Ok", 14),
           ("A medium sized prompt about cats and dogs.", 17)]


def test_batched_outputs_equal_single_outputs(engine, tiny_model_dir):
    """Requests that arrive while others run (joining mid-batch, prompts of different lengths
    prefilled in chunks, rows leaving at different steps) get what they get alone."""
    alone = [_alone(engine, tiny_model_dir, t, n) for t, n in PROMPTS]
    steps = engine.stats["steps"]
    reqs = []
    for t, n in PROMPTS:  # each one submitted once the previous one is decoding
        reqs.append(_ask(engine, tiny_model_dir, t, n))
        _wait(lambda r=reqs[-1]: r.output_tokens > 0 or r.events.qsize() > 0, "a first token")
    together = [r.result(timeout=300) for r in reqs]
    assert [r.text for r in together] == alone
    assert [r.output_tokens for r in together] == [n for _, n in PROMPTS]
    assert engine.stats["max_batch_seen"] >= 3  # they really ran together
    # fewer steps than one after the other (sum of lengths): the rows shared steps
    assert engine.stats["steps"] - steps < sum(n for _, n in PROMPTS) - len(PROMPTS)


def test_short_request_is_not_blocked_by_a_long_one(engine, tiny_model_dir):
    """A short request sent while a long one runs finishes long before it: it joins at the
    next step instead of waiting for the long request's batch to end."""
    long = _ask(engine, tiny_model_dir, "Write a very long essay.", 600)
    _wait(lambda: long.output_tokens >= 5, "the long request to be decoding")
    short = _ask(engine, tiny_model_dir, "Hi", 6)
    short.result(timeout=300)
    left = 600 - long.output_tokens
    assert left > 300, f"the short request ended with only {left} tokens of the long one left"
    long.result(timeout=300)
    assert long.output_tokens == 600 and long.stop_reason == "max_tokens"


def test_two_adapters_and_the_base_share_a_batch(engine, tiny_model_dir, adapters):
    """Rows of two LoRA adapters and of the base decode in one batch; each row gets what its
    model gives alone."""
    models = [adapters[0], tiny_model_dir, adapters[1]]
    jobs = [(models[i % 3], t, n) for i, (t, n) in enumerate(PROMPTS)]
    alone = [_alone(engine, m, t, n) for m, t, n in jobs]
    assert len({alone[0], alone[3]} | {_alone(engine, m, PROMPTS[0][0], PROMPTS[0][1])
                                        for m in models}) >= 3  # the adapters matter
    before = engine.stats["max_batch_seen"]
    reqs = [_ask(engine, m, t, n) for m, t, n in jobs]
    assert [r.result(timeout=300).text for r in reqs] == alone
    assert max(engine.stats["max_batch_seen"], before) >= 3
    assert len(engine.bases) == 1  # one copy of the base serves all three


def test_sampling_is_per_row(engine, tiny_model_dir):
    """Greedy and sampled rows share a batch; a seeded request samples the same text whatever
    runs beside it."""
    seeded = {"temperature": 0.9, "top_p": 0.8, "seed": 7}
    alone = _alone(engine, tiny_model_dir, "Hi", 20, **seeded)
    reqs = [_ask(engine, tiny_model_dir, "Ok", 30),
            _ask(engine, tiny_model_dir, "Hi", 20, **seeded),
            _ask(engine, tiny_model_dir, "Hey", 25, temperature=1.5, seed=1)]
    out = [r.result(timeout=300).text for r in reqs]
    assert out[1] == alone
    assert out[0] == _alone(engine, tiny_model_dir, "Ok", 30)
    other = _alone(engine, tiny_model_dir, "Hi", 20, temperature=0.9, top_p=0.8, seed=8)
    assert other != alone  # the seed decides


def test_constrained_and_free_rows_share_a_batch(engine, tiny_model_dir):
    """A constrained request beside free ones: it stays on its schema, they stay free, and the
    engine serves the next request normally."""
    schema = {"type": "object", "properties": {"n": {"enum": ["yes", "no"]}}, "required": ["n"]}
    free = _ask(engine, tiny_model_dir, "Hi", 12)
    held = _ask(engine, tiny_model_dir, "Give n", 40, json_schema=schema)
    assert json.loads(held.result(timeout=300).text)["n"] in ("yes", "no")
    free.result(timeout=300)
    assert _alone(engine, tiny_model_dir, "Ok", 3)


def _peft_greedy(tiny_model_dir, adapter_dir, text, n):
    """What PEFT itself generates with the adapter merged (the reference)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from afinar.data.tokenize import ensure_chat_template, render_prompt
    from afinar.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    ensure_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    ids = tok(render_prompt(tok, [{"role": "user", "content": text}]),
              add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_per_row_lora_matches_peft(engine, tiny_model_dir, adapters, tmp_path):
    """The engine's per-row LoRA gives what PEFT gives; an adapter it cannot apply per row
    (DoRA) is served merged into its own copy of the base, and also matches PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for d in adapters:
        assert _alone(engine, d, "Tell me about ships.", 12) == _peft_greedy(
            tiny_model_dir, d, "Tell me about ships.", 12)
    torch.manual_seed(5)
    m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM"))
    for name, p in m.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    m.save_pretrained(str(tmp_path / "dora"))
    got = _alone(engine, tmp_path / "dora", "Tell me about ships.", 12)
    assert got == _peft_greedy(tiny_model_dir, tmp_path / "dora", "Tell me about ships.", 12)
    assert len(engine.bases) == 2  # the merged copy beside the shared base


def test_packed_bf16_linear_layers_match_linear(tiny_model_dir, adapters):
    """oneDNN-prepacked bf16 layers (serving on CPUs with native bf16) compute what F.linear
    does, with a per-row LoRA on top too."""
    from transformers import AutoModelForCausalLM

    from afinar.inference import fastlinear
    from afinar.inference.multilora import MultiLora

    if not fastlinear.available():
        pytest.skip("this CPU's oneDNN has no native bf16")

    def load():
        m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
        lora = MultiLora(m.eval())
        lora.add("a", str(adapters[0]))
        return m, lora

    ids = torch.randint(0, 1000, (3, 11))
    (plain, plain_lora), (packed, packed_lora) = load(), load()
    assert fastlinear.pack(packed) == sum(isinstance(m, torch.nn.Linear)
                                          for m in packed.modules())
    with torch.inference_mode():
        for rows in ([None, None, None], ["a", None, "a"]):
            with plain_lora.step(rows):
                want = plain(input_ids=ids).logits
            with packed_lora.step(rows):
                got = packed(input_ids=ids).logits
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_sliding_window_model_runs_as_closed_groups(engine, tiny_model_dir, tmp_path):
    """A model with sliding-window attention (its cache cannot be re-framed) runs each group
    of requests to its end before the next joins, and still gets single-request outputs."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(3)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, sliding_window=8,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(str(tmp_path / "swa"))
    tok.save_pretrained(str(tmp_path / "swa"))
    jobs = [("Tell me a long story about the sea and its ships.", 20), ("Hi", 12),
            ("What is 2+2?", 16)]
    alone = [_alone(engine, tmp_path / "swa", t, n) for t, n in jobs]
    first = _ask(engine, tmp_path / "swa", *jobs[0])
    _wait(lambda: first.output_tokens > 0, "a first token")
    rest = [_ask(engine, tmp_path / "swa", t, n) for t, n in jobs[1:]]
    assert [r.result(timeout=300).text for r in [first, *rest]] == alone

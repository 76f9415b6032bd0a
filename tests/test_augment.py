"""Value re-sampling (data/augment.py): which values of a prompt reach its answer, how a
variant replaces them (copies, case changes, unit conversions, sums), what is never touched
(constants of the answers, instructions, tool and key names), and the trainer's use of it."""

from __future__ import annotations

import json
import random

from afinar.data.augment import find_slots, new_number, new_word, resample_values
from afinar.data.schema import Example


def _ex(user: str, answer, line: int = 1, system: str | None = None, tools=None) -> Example:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user})
    if isinstance(answer, dict) and "name" in answer and "arguments" in answer:
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "name": answer["name"], "arguments": answer["arguments"]}]})
    else:
        msgs.append({"role": "assistant", "content": answer if isinstance(answer, str)
                     else json.dumps(answer)})
    return Example(line, "messages", msgs, tools=tools)


def _stripe(i: int, rng: random.Random) -> Example:
    cus = f"cus_{rng.choice(['A1b2', 'Zz90', 'k3LmQ'])}{i}"
    amount = rng.choice([12, 99, 250, 31])
    cur = rng.choice(["EUR", "USD", "GBP"])
    name = rng.choice(["Ana Lopez", "Ivo Berg", "Lea Costa", "Omar Silva"])
    return _ex(f"Charge {amount} {cur} to {cus} for {name}", {
        "api": "/v1/charges", "customer": cus, "amount_cents": amount * 100,
        "currency": cur.lower(), "name": name}, line=i + 1,
        system="Answer with JSON for the Payments API.")


def test_slots_found_by_relation():
    slots = {(s.value, s.relations[0][0], s.relations[0][1])
             for s in find_slots(_stripe(3, random.Random(0)))}
    got = {v: (rel, arg) for v, rel, arg in slots}
    assert sum(rel == "copy" for rel, _ in got.values()) >= 3  # first and last name, the id
    cur = next(v for v in got if v in ("EUR", "USD", "GBP"))
    assert got[cur] == ("lower", None)  # EUR -> "eur"
    amount = next(v for v in got if v.isdigit())
    assert got[amount] == ("scale", 100)  # 99 -> 9900 cents
    assert any(v.startswith("cus_") for v in got)
    # the sum of two numbers of the prompt
    s = find_slots(_ex("I had 41 chairs and bought 7 more. How many now?", "48"))
    assert {(x.value, x.relations[0][0]) for x in s} == {("41", "sum"), ("7", "sum")}


def test_variants_replace_values_everywhere_with_their_relation():
    rng = random.Random(1)
    exs = [_stripe(i, rng) for i in range(40)]
    variants, rep = resample_values(exs, seed=5)
    assert rep.with_values == 40 and len(variants) == 40
    assert rep.numbers["number:scalex100"] == 40 and rep.words["word:lower"] == 40
    assert rep.computed == 0  # euros -> cents shifts the decimal point: not arithmetic
    for ex, v in zip(exs, variants, strict=True):
        user, answer = v.messages[1]["content"], json.loads(v.messages[2]["content"])
        assert v.messages[0] == ex.messages[0]  # the instructions are never changed
        assert answer["api"] == "/v1/charges"  # a constant of the answers stays
        amount = int(user.split()[1])
        assert answer["amount_cents"] == amount * 100
        cur = user.split()[2]
        assert answer["currency"] == cur.lower() and cur.isupper() and len(cur) == 3
        assert answer["customer"] in user and answer["customer"].startswith("cus_")
        assert answer["name"] in user and answer["name"] != json.loads(
            ex.messages[2]["content"])["name"]
        assert list(answer) == list(json.loads(ex.messages[2]["content"]))  # keys kept
    # deterministic for a seed
    assert [v.messages for v in resample_values(exs, seed=5)[0]] == [
        v.messages for v in variants]


def test_tool_calls_constants_and_computed_copies():
    tools = [{"name": "set_timer", "description": "Start a timer", "parameters": {
        "type": "object", "properties": {"seconds": {"type": "integer"}}}}]
    exs = [_ex(f"Set a timer for {m} minutes.", {"name": "set_timer", "arguments": {
        "seconds": m * 60}}, line=m, tools=tools) for m in range(3, 23)]
    variants, rep = resample_values(exs, seed=0, copies=1, computed_copies=3)
    assert rep.computed == 20 and len(variants) == 60  # a conversion: three variants each
    for v in variants:
        m = int(v.messages[0]["content"].split()[4])
        call = v.messages[1]["tool_calls"][0]
        assert call["name"] == "set_timer" and call["arguments"] == {"seconds": m * 60}
    # no value handed over (a label), or a value in every answer without the prompt: nothing
    labels = [_ex(f"Ticket {i}: my card was charged twice", "billing") for i in range(20)]
    assert resample_values(labels, 0)[1].with_values == 0
    consts = [_ex(f"Status of Order {i}?", "Order status: shipped") for i in range(20)]
    assert resample_values(consts, 0)[1].with_values == 0


def test_new_values_keep_their_shape():
    rng = random.Random(0)
    for _ in range(50):
        w = new_word("cus_A1b2", rng, set())
        assert w.startswith("cus_") and len(w) == 8 and w != "cus_A1b2"
        assert new_word("EUR", rng, set()).isupper()
        y = int(new_number("2024", rng, []))
        assert 1950 <= y <= 2080
        assert 10 <= int(new_number("42", rng, [])) <= 99
        assert 1 <= int(new_number("17", rng, [], day=True)) <= 28
        whole, frac = new_number("7.50", rng, []).split(".")
        assert len(frac) == 2


def test_most_new_names_are_one_token_words_the_answer_splits(tokenizer):
    """A name the tokenizer holds whole (" Leipzig") is spelt in pieces in an answer ('"Le',
    'ipzig'); pseudo-words never teach that, so most new names are such words (and only
    those a tokenizer splits without the space: " Paris" and "Paris" teach nothing new)."""
    from afinar.data.augment import VOCAB_SHARE, vocabulary_words

    words = vocabulary_words(tokenizer)
    assert "Leipzig" in words and len(words) > 1000
    assert all(len(tokenizer.tokenize(" " + w)) == 1 for w in words[::500])
    assert all(len(tokenizer.tokenize(w)) > 1 for w in words[::500])
    rows = [_ex(f"Ship to {c}, please.", {"city": c}, line=i + 1)
            for i, c in enumerate(["Lyon", "Porto", "Graz", "Ghent"] * 10)]
    out, _ = resample_values(rows, seed=3, words=words)
    cities = [json.loads(v.messages[-1]["content"])["city"] for v in out]
    known = sum(c in set(words) for c in cities)
    assert len(cities) == 40 and 40 * VOCAB_SHARE - 12 <= known <= 39, (known, cities)
    assert all(f"to {c}," in v.messages[0]["content"] for v, c in zip(out, cities, strict=True))


def test_closed_sets_stay_and_variants_keep_their_tool_schemas():
    """A value from an enum of the tool schemas (a closed set: currencies here) is never
    re-sampled; every variant's calls satisfy their schemas."""
    from afinar.data.chat import check_arguments

    tool = {"name": "pay", "description": "Charge", "parameters": {
        "type": "object", "properties": {
            "customer": {"type": "string", "pattern": "^cus_"},
            "amount": {"type": "integer", "maximum": 100000},
            "currency": {"enum": ["usd", "eur", "gbp"]}},
        "required": ["customer", "amount", "currency"]}}
    rng = random.Random(3)
    exs = []
    for i in range(30):
        cur, amt, cus = rng.choice(["USD", "EUR", "GBP"]), rng.randint(5, 99), f"cus_{i}x{i}"
        exs.append(_ex(f"Charge {amt} {cur} to {cus}", {"name": "pay", "arguments": {
            "customer": cus, "amount": amt * 100, "currency": cur.lower()}}, line=i,
            tools=[tool]))
    variants, rep = resample_values(exs, seed=2)
    assert "word:lower" not in rep.words and rep.words["word:copy"] == 30
    assert len(variants) == 30
    for v in variants:
        call = v.messages[1]["tool_calls"][0]
        assert call["arguments"]["currency"] in ("usd", "eur", "gbp")
        assert check_arguments(call["arguments"], tool) is None

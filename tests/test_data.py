"""Readers, schema detection/normalisation, data check, split."""

from __future__ import annotations

import json

import pytest

from afinar.data.check import check_file, format_report
from afinar.data.readers import read_records
from afinar.data.schema import normalize, serialize_value
from afinar.data.split import split_file
from afinar.errors import DataError

from conftest import write_jsonl


def _norm(path):
    return normalize(read_records(path))


def test_prompt_completion(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "hi", "completion": "there"}])
    n = _norm(p)
    assert n.schema == "prompt_completion" and not n.issues
    assert n.examples[0].messages == [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "there"}]


def test_instruction_with_json_objects_is_deterministic(tmp_path):
    rows = [{"instruction": "Do", "input": {"b": 1, "a": "x"}, "output": {"z": [1, 2], "k": "ñ"}}]
    n = _norm(write_jsonl(tmp_path / "a.jsonl", rows))
    ex = n.examples[0]
    assert n.schema == "instruction"
    assert ex.messages[0]["content"] == 'Do\n\n{"a": "x", "b": 1}'
    assert ex.target() == '{"k": "ñ", "z": [1, 2]}'
    assert serialize_value({"b": 1, "a": 2}) == serialize_value({"a": 2, "b": 1})


def test_openai_and_bedrock_conversations(tmp_path):
    oa = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                       {"role": "assistant", "content": "A"}]}
    br = {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "S"}],
          "messages": [{"role": "user", "content": [{"text": "U"}]},
                       {"role": "assistant", "content": [{"text": "A"}]}]}
    a = _norm(write_jsonl(tmp_path / "a.jsonl", [oa]))
    b = _norm(write_jsonl(tmp_path / "b.jsonl", [br]))
    assert a.schema == "messages" and b.schema == "bedrock_conversation"
    assert a.examples[0].messages == b.examples[0].messages


def test_text_input_and_classification(tmp_path):
    assert _norm(write_jsonl(tmp_path / "t.jsonl", [{"text": "abc"}])).schema == "text"
    assert _norm(write_jsonl(tmp_path / "i.jsonl", [{"input": "abc"}])).schema == "input_text"
    c = _norm(write_jsonl(tmp_path / "c.jsonl", [{"text": "abc", "label": 3}]))
    assert c.schema == "classification" and c.examples[0].label == "3"


def test_readers_json_csv_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.csv").write_text("prompt,completion\n" + "".join(
        f"p{i},c{i}\n" for i in range(3)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    outs = [_norm(tmp_path / f"a.{ext}") for ext in ("json", "csv", "parquet")]
    for n in outs:
        assert n.schema == "prompt_completion" and not n.issues
        assert [e.target() for e in n.examples] == ["c0", "c1", "c2"]
    assert [e.line for e in outs[1].examples] == [2, 3, 4]  # CSV: header is line 1


# -- bad inputs: each gives the intended error, at the right line and field --------------------
GOOD = {"prompt": "p", "completion": "c"}
BAD_CASES = [
    # (name, lines, expected code, expected line, expected field)
    ("malformed json", [GOOD, '{"prompt": "p", "completion": }'], "malformed_json", 2, None),
    ("missing field", [GOOD, {"prompt": "p"}], "missing", 2, "completion"),
    ("empty field", [GOOD, {"prompt": "p", "completion": "  "}], "empty", 2, "completion"),
    ("wrong type", [GOOD, {"prompt": "p", "completion": 5}], "wrong_type", 2, "completion"),
    ("mixed schemas", [GOOD, GOOD, {"text": "x"}], "mixed_schema", 3, None),
    ("unknown schema", [GOOD, {"foo": 1}], "unknown_schema", 2, None),
    ("not an object", [GOOD, "[1, 2]"], "not_an_object", 2, None),
    ("no assistant", [{"messages": [{"role": "user", "content": "u"}]}], "no_target", 1,
     "messages"),
    ("bad role", [{"messages": [{"role": "bot", "content": "u"}]}], "wrong_value", 1,
     "messages[0].role"),
    ("empty message", [{"messages": [{"role": "user", "content": ""},
                                     {"role": "assistant", "content": "a"}]}], "empty", 1,
     "messages[0].content"),
    ("bedrock content not list", [{"schemaVersion": "bedrock-conversation-2024", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"text": "a"}]}]}],
     "wrong_type", 1, "messages[0].content"),
    ("bedrock order", [{"schemaVersion": "bedrock-conversation-2024", "messages": [
        {"role": "assistant", "content": [{"text": "a"}]},
        {"role": "user", "content": [{"text": "u"}]}]}], "wrong_order", 1, "messages"),
    ("instruction without output", [{"instruction": "do", "input": "x"}], "missing", 1,
     "output"),
    ("empty label", [{"text": "t", "label": ""}], "empty", 1, "label"),
]


@pytest.mark.parametrize("name,lines,code,line,field", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_reported_with_line_and_field(tmp_path, name, lines, code, line, field):
    p = write_jsonl(tmp_path / "bad.jsonl", lines)
    rep = check_file(p)
    hits = [e for e in rep.errors if e["code"] == code]
    assert hits, f"{name}: expected {code}, got {rep.errors}"
    assert hits[0]["line"] == line and hits[0]["field"] == field
    assert hits[0]["file"] == str(p)
    assert not rep.ok
    assert f"line {line}" in format_report(rep)


def test_invalid_utf8_and_long_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff\xfe", "completion": '
                  b'"c"}\n' + json.dumps({"prompt": "a" * 2000, "completion": "c"}).encode())
    r = read_records(p, max_line_bytes=1000)
    codes = {(i.code, i.line) for i in r.issues}
    assert ("invalid_utf8", 2) in codes and ("line_too_long", 3) in codes


def test_empty_file_unsupported_type_missing_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    rep = check_file(tmp_path / "e.jsonl")
    assert not rep.ok and rep.errors[0]["code"] == "empty_file"
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type"):
        check_file(tmp_path / "x.xml")
    with pytest.raises(DataError, match="file not found"):
        check_file(tmp_path / "nope.jsonl")


def test_csv_extra_columns(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\np,c\np,c,extra\n")
    r = read_records(tmp_path / "a.csv")
    assert r.issues[0].code == "csv_columns" and r.issues[0].line == 3


def test_duplicates_tokens_labels_and_guidance(tmp_path, tokenizer):
    rows = [{"prompt": f"Please create a monthly subscription of ${i} for customer "
                       f"cus_{i * 7919}, starting with the next billing cycle, and send the "
                       f"receipt to the billing contact on file.",
             "completion": f"plan {i}", "label": "sub" if i % 3 else "other"} for i in range(30)]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({**rows[1], "prompt": rows[1]["prompt"].replace("the next", "next")})  # near
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    rep = check_file(p, tokenizer=tokenizer, max_length=40)
    assert rep.exact_duplicates == [[1, 31]]
    near = [tuple(d["lines"]) for d in rep.near_duplicates]
    assert (2, 32) in near
    # different customers and amounts are similar text but must not be flagged
    assert all(set(pair) & {31, 32} for pair in near)
    assert rep.tokens["truncated"] > 0 and rep.tokens["max"] > 40
    assert rep.labels["counts"] == {"sub": 21, "other": 11}
    assert rep.size_guidance["level"] == "too_few"
    assert rep.ok  # warnings only


def test_split_deterministic_and_stratified(tmp_path):
    rows = [{"text": f"doc {i}", "label": "a" if i < 80 else "b"} for i in range(100)]
    p = write_jsonl(tmp_path / "c.jsonl", rows)
    r1 = split_file(p, tmp_path / "s1", (0.8, 0.1, 0.1), seed=3)
    r2 = split_file(p, tmp_path / "s2", (0.8, 0.1, 0.1), seed=3)
    for part in ("train", "validation", "test"):
        assert r1[part].read_text() == r2[part].read_text()
    test = [json.loads(x) for x in r1["test"].read_text().splitlines()]
    assert r1["stratified"] and sorted(x["label"] for x in test) == ["a"] * 8 + ["b"] * 2
    all_rows = sum((r1[part].read_text().splitlines() for part in ("train", "validation",
                                                                    "test")), [])
    assert len(all_rows) == 100 and len(set(all_rows)) == 100
    r3 = split_file(p, tmp_path / "s3", (0.8, 0.1, 0.1), seed=4)
    assert r3["test"].read_text() != r1["test"].read_text()


def test_split_refuses_bad_data(tmp_path):
    p = write_jsonl(tmp_path / "b.jsonl", [GOOD, {"prompt": "x"}])
    with pytest.raises(DataError, match="line 2"):
        split_file(p, tmp_path / "o")


def test_preference_pairs_in_both_shapes(tmp_path, tokenizer):
    """OpenAI's preference format and prompt/chosen/rejected: normalised to the prompt + each
    answer; every problem named by line and the field as the record spells it."""
    q = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "2+2?"}]
    good_openai = {"input": {"messages": q},
                   "preferred_output": [{"role": "assistant", "content": '{"a": 4}'}],
                   "non_preferred_output": [{"role": "assistant", "content": '{"a": 5}'}]}
    rows = [good_openai,
            {"input": {"messages": q}, "preferred_output": [{"role": "assistant",
                                                             "content": "x"}]},
            {"input": {"messages": [{"role": "wizard", "content": "hi"}]},
             "preferred_output": [{"role": "assistant", "content": "a"}],
             "non_preferred_output": [{"role": "assistant", "content": "b"}]},
            {**good_openai, "non_preferred_output": [{"role": "user", "content": "b"}]},
            {**good_openai, "non_preferred_output": good_openai["preferred_output"]},
            {**good_openai, "preferred_output": [{"role": "assistant", "content": 7}]}]
    rep = check_file(write_jsonl(tmp_path / "pref.jsonl", rows), tokenizer=tokenizer)
    assert rep.schema == "preference" and rep.valid == 1
    errs = {(e["line"], e["field"]) for e in rep.errors}
    assert errs == {(2, "non_preferred_output"), (3, "input.messages[0].role"),
                    (4, "non_preferred_output[0]"), (5, "non_preferred_output"),
                    (6, "preferred_output[0].content")}, rep.errors
    assert any(e["code"] == "identical_pair" for e in rep.errors)
    assert sum(rep.tokens["histogram"].values()) == 1  # the pair, counted by its longer side

    common = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
              {"prompt": q, "chosen": [{"role": "assistant", "content": "4"}],
               "rejected": [{"role": "assistant", "content": "22"}]},
              {"prompt": "2+2?", "chosen": "4", "rejected": "5"},  # a duplicate pair
              {"prompt": "2+2?", "chosen": "4", "rejected": "6"},  # not one: another answer
              {"prompt": "", "chosen": "4", "rejected": "5"},
              {"prompt": "3+3?", "chosen": "6"},
              {"prompt": "3+3?", "chosen": "6", "rejected": 7}]
    path = write_jsonl(tmp_path / "pairs.jsonl", common)
    norm = normalize(read_records(path))
    assert norm.schema == "preference" and len(norm.examples) == 4
    ex = norm.examples[0]
    assert ex.messages == [{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}]
    assert ex.rejected[-1]["content"] == "5" and ex.prompt_messages() == ex.rejected[:-1]
    assert [(i.line, i.field) for i in norm.issues] == [(5, "prompt"), (6, "rejected"),
                                                        (7, "rejected")]
    rep = check_file(path)
    assert rep.exact_duplicates == [[1, 3]]
    # preference data is not supervised data: training on it as such says which it is
    with pytest.raises(DataError, match="'preference' data"):
        from afinar.training.data import prepare
        prepare(str(path), tokenizer, 64)

"""The sequence length a fine-tune uses, chosen from the data, and what happens to an example
longer than it.

`max_length` "auto" covers the longest example (rounded up to a multiple of 64), unless that
does not fit the model's context or the machine's memory for one sequence; then the longest
that fits, with the share of examples it covers. An example longer than the length is never
dropped silently and never loses its answer to a right-side cut:
- the prompt is cut, not the answer: the start of the conversation (the system turn and its
  tool schemas, up to a quarter of the length) is kept, then as much of the end as fits, so
  every answer token stays (`prompt_cut`);
- in a multi-turn conversation whose answers alone do not fit, the earliest turns go and the
  last answers stay (`turns_cut`);
- only when the last answer alone is longer than the length is the example left out
  (`dropped`), and the data check and the run name its lines and the flag that fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.tokenize import IGNORE_INDEX, Encoded

ROUND_TO = 64
MIN_AUTO = 128
MAX_AUTO = 8192  # beyond this, an explicit --max-length (long-context training is a choice)
# activation memory of one token in a LoRA/full training step, per layer, in units of the
# hidden size and the MLP width (bf16, SDPA attention, the loss on answer tokens only):
# measured on SmolLM2-135M (30 layers, 576/1536): ~1.1 MB a token
ACT_HIDDEN, ACT_MLP = 16, 6
MEMORY_SHARE = 0.4  # of the machine's memory (or the GPU's), for one sequence's activations


@dataclass
class LengthChoice:
    max_length: int
    covered: float  # share of the examples that fit whole
    longest: int
    reason: str


@dataclass
class FitReport:
    max_length: int
    examples: int = 0
    longer: int = 0
    prompt_cut: int = 0
    turns_cut: int = 0
    dropped_lines: list[int] = field(default_factory=list)
    longest_answer: int = 0  # tokens of the longest last answer among the dropped

    def count(self, how: str, line: int, answer_tokens: int = 0) -> None:
        if how != "kept":
            self.longer += 1
        if how == "prompt_cut":
            self.prompt_cut += 1
        elif how == "turns_cut":
            self.turns_cut += 1
        elif how == "dropped":
            self.dropped_lines.append(line)
            self.longest_answer = max(self.longest_answer, answer_tokens)

    def describe(self, role: str = "training") -> str | None:
        if not self.longer:
            return None
        parts = []
        if self.prompt_cut:
            parts.append(f"{self.prompt_cut} had their prompt shortened (the start and the "
                         f"answer kept)")
        if self.turns_cut:
            parts.append(f"{self.turns_cut} lost their earliest turns (the last answers kept)")
        if self.dropped_lines:
            lines = ", ".join(map(str, self.dropped_lines[:10])) + (
                " ..." if len(self.dropped_lines) > 10 else "")
            parts.append(f"{len(self.dropped_lines)} were left out: their last answer alone is "
                         f"longer (lines {lines})")
        return (f"{self.longer} of {self.examples} {role + ' ' if role else ''}examples are "
                f"longer than max_length={self.max_length}: " + "; ".join(parts))

    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "examples": self.examples,
                "longer": self.longer, "prompt_cut": self.prompt_cut,
                "turns_cut": self.turns_cut, "dropped": len(self.dropped_lines),
                "dropped_lines": self.dropped_lines[:100]}


def per_token_bytes(config: dict) -> int | None:
    """Activation memory of one training token, from a model's config.json; None when the
    config does not say its shape."""
    c = config.get("text_config", config)
    h, n = c.get("hidden_size"), c.get("num_hidden_layers")
    if not h or not n:
        return None
    inter = c.get("intermediate_size") or 4 * h
    return int(2 * n * (ACT_HIDDEN * h + ACT_MLP * inter))


def token_budget(config: dict, memory_bytes: int | None) -> int | None:
    """How many tokens one sequence may hold within MEMORY_SHARE of `memory_bytes`."""
    per = per_token_bytes(config)
    if not per or not memory_bytes:
        return None
    return int(memory_bytes * MEMORY_SHARE // per)


def model_limits(model_dir: str | Path, device: str = "cpu") -> tuple[int | None, int | None]:
    """(the model's context, the tokens one training sequence may hold in memory) for a model
    folder on this machine; None where unknown. The memory is the GPU's or the machine's total
    (not what is free: the same data gets the same length on every run, so a resume
    agrees)."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    c = config.get("text_config", config)
    return c.get("max_position_embeddings"), token_budget(config, _memory_bytes(device))


def _memory_bytes(device: str) -> int | None:
    try:
        if device == "cuda":
            import torch
            return torch.cuda.get_device_properties(0).total_memory
        import psutil
        return psutil.virtual_memory().total
    except Exception:  # no reading: no memory limit on the length (the other limits hold)
        return None


def _round_up(n: int) -> int:
    return max(MIN_AUTO, int(math.ceil(n / ROUND_TO)) * ROUND_TO)


def choose_max_length(lengths: list[int], context: int | None = None,
                      budget: int | None = None) -> LengthChoice:
    """The length that covers the longest example, within the model's context, the memory
    budget and MAX_AUTO."""
    if not lengths:
        return LengthChoice(MIN_AUTO, 1.0, 0, "no examples")
    longest = max(lengths)
    limits = {"the model's context": context, "the memory for one sequence": budget,
              "the auto limit": MAX_AUTO}
    cap_name, cap = min(((k, v) for k, v in limits.items() if v), key=lambda kv: kv[1])
    cap = max(ROUND_TO, cap // ROUND_TO * ROUND_TO) if cap >= ROUND_TO else cap
    want = _round_up(longest)
    if want <= cap:
        return LengthChoice(want, 1.0, longest,
                            f"the longest example has {longest} tokens: covers all "
                            f"{len(lengths)}")
    covered = sum(1 for x in lengths if x <= cap) / len(lengths)
    pct = next((p for p in (99, 95, 90, 75, 50) if _percentile(lengths, p) <= cap), None)
    return LengthChoice(cap, covered, longest,
                        f"the longest example has {longest} tokens, more than {cap_name} "
                        f"allows ({cap}): covers {covered:.1%} of the examples whole"
                        + (f" (p{pct})" if pct else "") + "; the longer ones are cut on the "
                        "prompt side (--max-length to choose)")


def _percentile(xs: list[int], p: float) -> int:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def fit(enc: Encoded, max_length: int) -> tuple[Encoded | None, str]:
    """One encoded example within `max_length`: ("kept" | "prompt_cut" | "turns_cut" |
    "dropped"). Cuts never split an answer: the kept answer tokens are whole turns."""
    n = len(enc.input_ids)
    if n <= max_length:
        return enc, "kept"
    labelled = [i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX]
    if not labelled:
        return None, "dropped"
    first = labelled[0]
    if n - first <= max_length:  # every answer fits: cut the prompt in its middle
        head = min(max_length // 4, first, max_length - (n - first))
        tail = max_length - head
        return _cut(enc, head, n - tail), "prompt_cut"
    # the answers alone are too long: keep the last answer whole, as much before it as fits
    runs = _runs(labelled)
    last_start = runs[-1][0]
    if n - last_start > max_length:
        return None, "dropped"
    start = n - max_length
    # do not begin inside an answer: an answer cut at its start would teach a partial turn
    for a, b in runs:
        if a < start <= b:
            start = b + 1
    out = Encoded(enc.input_ids[start:], enc.labels[start:], True, enc.line,
                  enc.position_ids[start:] if enc.position_ids else None)
    return out, "turns_cut"


def _runs(idx: list[int]) -> list[tuple[int, int]]:
    """Consecutive index runs [(first, last), ...]: the answer turns."""
    runs, a = [], idx[0]
    for prev, cur in zip(idx, idx[1:], strict=False):
        if cur != prev + 1:
            runs.append((a, prev))
            a = cur
    runs.append((a, idx[-1]))
    return runs


def _cut(enc: Encoded, head: int, resume: int) -> Encoded:
    """Tokens [0, head) and [resume, n): the middle of the prompt removed."""
    ids = enc.input_ids[:head] + enc.input_ids[resume:]
    labels = enc.labels[:head] + enc.labels[resume:]
    return Encoded(ids, labels, True, enc.line, None)


def last_answer_tokens(enc: Encoded) -> int:
    """Tokens from the start of the last answer to the end: what must fit."""
    labelled = [i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX]
    return len(enc.input_ids) - _runs(labelled)[-1][0] if labelled else 0


def fit_lengths(lengths_and_answers: list[tuple[int, int, int]], max_length: int) -> FitReport:
    """What fitting would do, from (line, tokens, last-answer tokens) alone (the data check):
    the same decisions as `fit` for single-answer examples."""
    rep = FitReport(max_length, examples=len(lengths_and_answers))
    for line, n, answer in lengths_and_answers:
        how = "kept" if n <= max_length else "dropped" if answer > max_length else "prompt_cut"
        rep.count(how, line, answer)
    return rep

"""Turn normalised examples into token ids with a loss mask, using the model's own chat
template. Loss is computed only on assistant tokens (labels are -100 elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass

from afinar.data.schema import Example

IGNORE_INDEX = -100

# Used only when a tokenizer has no chat template of its own (e.g. a base model); it is saved
# with the trained model so inference uses the same format.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    line: int
    position_ids: list[int] | None = None  # packed documents: restart at each document

    def __len__(self) -> int:
        return len(self.input_ids)


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The generation prompt for canonical messages (tools rendered by data/tools.py)."""
    from afinar.data.tools import render

    return render(tokenizer, messages, tools)


def encode_example(tokenizer, ex: Example, max_length: int) -> Encoded:
    from afinar.data.tools import template_messages

    if ex.messages is None:
        return encode_text(tokenizer, ex.text or "", max_length, ex.line)
    msgs, kw, weights = template_messages(tokenizer, ex.messages, ex.tools)

    def text(upto: int, gen: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tokenize=False,
                                             add_generation_prompt=gen, **kw)

    full = text(len(msgs))
    # character spans of each assistant turn with weight 1 (its text and tool calls, never
    # tool results): from the end of the generation prompt that precedes it to the end of the
    # rendering that includes it
    spans = [(len(text(i, gen=True)), len(text(i + 1))) for i, w in enumerate(weights) if w]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, _e) in enumerate(enc["offset_mapping"]):
        if any(a <= s < b for a, b in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated, ex.line)


def encode_text(tokenizer, text: str, max_length: int, line: int = 0) -> Encoded:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    return Encoded(ids, list(ids), truncated, line)

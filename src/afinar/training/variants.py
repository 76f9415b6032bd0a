"""Value variants for a fine-tune (`value_variants`): the training examples whose prompts hand
values to their answers, again with new values (data/augment.py), encoded and fitted like the
rest; and the held-out examples with new values that validation's exact match asks.

auto: 1 variant of each such example, up to COMPUTED_FACTOR of one whose answer computes a
value (minutes -> seconds, a sum), when at least AUTO_SHARE of the examples hand values; the
variants' tokens at most BUDGET x the examples'. Measured on the defaults suite
(benchmarks/README.md): chat_memory 70% -> 93%, tool_call 58% -> 75%.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from afinar.data.augment import resample_values, vocabulary_words
from afinar.data.length import fit
from afinar.data.tokenize import Encoded, encode_example

AUTO_SHARE = 0.2
COMPUTED_FACTOR = 8
BUDGET = 4


@dataclass
class Variants:
    value: int  # value_variants as resolved
    reason: str | None  # for auto: why (None when given)
    report: dict | None = None  # data/augment.py's AugmentReport, as a dict
    sample: list[Encoded] = field(default_factory=list)  # held-out examples, new values
    message: str | None = None  # what the run says about it


def add_variants(train, valid, tokenizer, setting, seed: int, max_length: int,
                 sample_size: int) -> Variants:
    """Append the variants to `train` (PreparedData: encoded and examples, aligned) and return
    what was done. `setting`: value_variants ("auto" or 0-8)."""
    exs = train.examples
    if setting == 0 or not exs or None in exs:
        return Variants(0, None)
    copies = 1 if setting == "auto" else setting
    words = vocabulary_words(tokenizer)
    variants, rep = resample_values(exs, seed, copies, COMPUTED_FACTOR * copies, words)
    if setting == "auto" and rep.share < AUTO_SHARE:
        return Variants(0, f"{rep.with_values} of {rep.examples} examples hand values from the "
                           f"prompt to the answer (fewer than {AUTO_SHARE:.0%}): no variants",
                        rep.to_dict())
    # later rounds (the computed examples' extra variants) are the first to go over budget
    budget, spent, added = BUDGET * sum(len(e) for e in train.encoded), 0, 0
    for v in variants:
        enc, _how = fit(encode_example(tokenizer, v, 10**9), max_length)
        if enc is None:
            continue
        if spent + len(enc) > budget:
            break
        spent += len(enc)
        train.encoded.append(enc)
        train.examples.append(v)
        added += 1
    rep.variants = added
    why = rep.describe() + (f" (up to {COMPUTED_FACTOR} for those)" if rep.computed else "") \
        + (f"; held to {BUDGET}x the examples' tokens" if added < len(variants) else "")
    out = Variants(copies, why if setting == "auto" else None, rep.to_dict())
    if valid is not None and len(valid.examples) == len(valid.encoded) and None not in \
            valid.examples:
        held, _ = resample_values(valid.examples, seed + 1, 1, 1, words)
        for v in held[:sample_size]:
            enc, _how = fit(encode_example(tokenizer, v, 10**9), max_length)
            if enc is not None:
                out.sample.append(enc)
    out.message = f"value re-sampling: {why}"
    return out

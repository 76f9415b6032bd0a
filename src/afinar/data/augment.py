"""Value re-sampling: training variants in which the values a prompt hands to its answer
(names, ids, codes, amounts, counts, years) are replaced by new ones, so that a fine-tuned model
learns to copy (or convert) what the prompt says instead of recalling the values it saw.

Why: a small model fine-tuned on a few hundred examples that reuse a few dozen values answers a
new value with an old one (a city it was trained on, a count from training's range). Training on
variants whose values were never seen teaches the copy itself.

What counts as a value, found from the data alone (no task knowledge):
- a word of the prompt (user and tool turns; never the system turn or the tool schemas) that
  looks like a name or an id (capitalised, upper case, letters with digits or '_', an e-mail),
  and appears in the answer as it is, in lower case or in upper case;
- a number of the prompt that appears in the answer as it is, zero-padded, scaled by 10, 100,
  1000, 60 or 3600 (units and cents), or as the sum of two numbers of the prompt — each relation
  kept only where it holds in enough of the data set to be a rule, not a coincidence.
A value that appears in answers without being in their prompts (a constant of the answer format),
in most prompts (the instructions) or in an `enum` of the tool schemas (a closed set) is never
changed. JSON keys and tool names are never changed: only JSON leaves and plain text; a variant
whose tool calls no longer satisfy their schemas is not used.

A variant replaces each value everywhere in the prompt and the answer, with the same
relation: a pseudo-word of the same shape for a word (an id keeps its prefix: `cus_123` ->
`cus_904`), a number of the same kind (digits, decimals, a year) for a number.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from afinar.data.schema import Example

# a standalone number: not part of a word, an id or a version ("v2", "call_1", "1.2.3")
_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w]|[.,]\d)")
# name- or id-like words: e-mails, ids with '_' or digits, capitalised and upper-case words
_WORD = re.compile(
    r"(?<![\w@.-])(?:[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|[^\W\d_]+_[\w]+"
    r"|(?=[^\W_]*\d)(?=[^\W_]*[^\W\d_])[^\W_]{4,}"
    r"|[A-Z][^\W\d_]{2,}|[A-Z]{2,6})(?![\w@-])")
SCALES = (1, 10, 100, 1000, 60, 3600)
# a relation must hold in this share of the examples that have numbers to be used
MIN_RULE_SHARE = 0.1
# a value in more than this share of the prompts is part of the instructions, not a value
MAX_PROMPT_SHARE = 0.5
_CONS, _VOWELS = "bcdfghklmnprstvz", "aeiou"
_MONTHS = ("jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|"
           "june|july|august|september|october|november|december|enero|febrero|marzo|abril|"
           "mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre")


@dataclass
class Slot:
    value: str  # as the prompt spells it
    kind: str  # word | number
    relations: list[tuple[str, object]] = field(default_factory=list)  # how the answer has it
    day: bool = False  # next to a month's name: re-sampled as a day of a month


@dataclass
class AugmentReport:
    examples: int  # examples looked at
    with_values: int  # of them, with at least one value to re-sample
    variants: int  # variants made
    computed: int = 0  # examples whose answer computes a value from the prompt
    words: Counter = field(default_factory=Counter)  # word slots by relation
    numbers: Counter = field(default_factory=Counter)  # number slots by relation

    @property
    def share(self) -> float:
        return self.with_values / self.examples if self.examples else 0.0

    def describe(self) -> str:
        kinds = [f"{n} {k}" for k, n in (self.words + self.numbers).most_common(6)]
        return (f"{self.with_values} of {self.examples} examples hand values from the prompt to "
                f"the answer ({', '.join(kinds) or 'none'}"
                + (f"; {self.computed} compute one" if self.computed else "")
                + f"): {self.variants} variants with new values added")

    def to_dict(self) -> dict:
        return {"examples": self.examples, "with_values": self.with_values,
                "computed": self.computed, "variants": self.variants, "words": dict(self.words),
                "numbers": dict(self.numbers)}


# -- reading an example -----------------------------------------------------------------------

def _prompt_texts(ex: Example) -> list[str]:
    return [m.get("content") or "" for m in ex.messages or []
            if m["role"] in ("user", "tool")]


def _leaves(obj, out: list) -> list:
    """The string and number leaves of a JSON value (keys excluded)."""
    if isinstance(obj, dict):
        for v in obj.values():
            _leaves(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _leaves(v, out)
    elif isinstance(obj, str | int | float) and not isinstance(obj, bool):
        out.append(obj)
    return out


def _answer_json(text: str):
    s = (text or "").strip()
    if s[:1] in "{[":
        try:
            return json.loads(s)
        except ValueError:
            return None
    return None


def _answer_leaves(ex: Example) -> list:
    """What the answers say, as leaves: plain text, a JSON answer's leaves, tool-call
    arguments' leaves."""
    out: list = []
    for m in ex.messages or []:
        if m["role"] != "assistant" or not m.get("weight", 1):
            continue
        parsed = _answer_json(m.get("content") or "")
        if parsed is not None:
            _leaves(parsed, out)
        elif m.get("content"):
            out.append(m["content"])
        for c in m.get("tool_calls") or []:
            _leaves(c["arguments"], out)
    return out


def _words_in(s: str) -> set[str]:
    return {m.group(0) for m in _WORD.finditer(s)}


def _nums_in(s: str) -> list[str]:
    return [m.group(0) for m in _NUM.finditer(s)]


def _zero_padded(n: str) -> bool:
    return len(n) > 1 and n[0] == "0" and n[1] != "."


def _answer_numbers(leaves: list) -> list[float]:
    """The numbers an answer holds; zero-padded ones ("05" in a date) are formats, not
    numbers (the pad2 relation finds them)."""
    out = []
    for x in leaves:
        if isinstance(x, int | float):
            out.append(float(x))
        else:
            out += [float(n) for n in _nums_in(x) if not _zero_padded(n)]
    return out


def _is_day(num: str, prompt: str) -> bool:
    m = rf"(?:{_MONTHS})"
    return re.search(rf"(?i)\b{m}\.?\s+{num}(?![\w.])|(?<![\w.]){num}\s+(?:of\s+|de\s+)?"
                     rf"{m}\b", prompt) is not None


def _word_relation(word: str, leaves: list) -> str | None:
    text = [x for x in leaves if isinstance(x, str)]
    for rel, form in (("copy", word), ("lower", word.lower()), ("upper", word.upper())):
        pat = re.compile(r"(?<![\w@.-])" + re.escape(form) + r"(?![\w@-])")
        if any(pat.search(t) for t in text):
            return rel
    return None


def _number_relations(num: str, others: list[float], answer: list[float],
                      texts: list[str]) -> list[tuple[str, object]]:
    x = float(num)
    rels: list[tuple[str, object]] = []
    for k in SCALES:
        if any(abs(a - x * k) < 1e-9 for a in answer):
            rels.append(("scale", k))
    if "." not in num and x < 10 and any(re.search(rf"(?<![\w.])0{num}(?![\w.])", t)
                                         for t in texts):
        rels.append(("pad2", 2))
    for y in others:
        if any(abs(a - (x + y)) < 1e-9 for a in answer) and not any(
                abs(a - x) < 1e-9 for a in answer):
            rels.append(("sum", y))
    return rels


def find_slots(ex: Example) -> list[Slot]:
    """The values one example's prompt hands to its answer (before the data set's rules)."""
    if not ex.messages:
        return []
    prompt = "\n".join(_prompt_texts(ex))
    leaves = _answer_leaves(ex)
    texts = [x for x in leaves if isinstance(x, str)]
    slots = []
    for w in sorted(_words_in(prompt)):
        rel = _word_relation(w, leaves)
        if rel:
            slots.append(Slot(w, "word", [(rel, None)]))
    nums = _nums_in(prompt)
    answer = _answer_numbers(leaves)
    for n in dict.fromkeys(nums):
        others = [float(m) for m in nums if m != n]
        rels = _number_relations(n, others, answer, texts)
        if rels:
            slots.append(Slot(n, "number", rels, day=_is_day(n, prompt)))
    return slots


# -- the data set's rules -----------------------------------------------------------------------

def _rule_key(s: Slot, rel: tuple[str, object]) -> str:
    if s.kind == "word":
        return f"word:{rel[0]}"
    return f"number:{rel[0]}" + (f"x{rel[1]}" if rel[0] == "scale" else "")


def _plan(examples: list[Example]) -> tuple[list[list[Slot]], AugmentReport]:
    """Each example's slots, kept only where the data set makes them a rule: values that are
    not constants of the answers or of the instructions, relations common enough."""
    n = len(examples)
    found = [find_slots(ex) for ex in examples]
    prompt_count: Counter = Counter()
    answer_only: Counter = Counter()
    both: Counter = Counter()
    for ex, slots in zip(examples, found, strict=True):
        pw = _words_in("\n".join(_prompt_texts(ex)))
        prompt_count.update(pw)
        copied = {s.value for s in slots if s.kind == "word"}
        both.update(copied)
        aw = set()
        for x in _answer_leaves(ex):
            if isinstance(x, str):
                aw |= _words_in(x)
        answer_only.update(w for w in aw if w not in pw)
    tool_words, closed = set(), set()  # names in the tool schemas; their enums' members
    for ex in examples:
        if ex.tools:
            tool_words |= _words_in(json.dumps(ex.tools))
            closed |= {str(v) for v in _enums(ex.tools)}
    with_numbers = sum(1 for ex in examples if any(
        _nums_in(t) for t in _prompt_texts(ex))) or 1
    rule_count: Counter = Counter()
    for slots in found:
        rule_count.update({_rule_key(s, r) for s in slots if s.kind == "number"
                           for r in s.relations})
    rules = {k for k, c in rule_count.items() if c >= MIN_RULE_SHARE * with_numbers}
    report = AugmentReport(n, 0, 0)
    kept_all = []
    for slots in found:
        kept = []
        for s in slots:
            if s.kind == "word":
                if (prompt_count[s.value] > MAX_PROMPT_SHARE * n or s.value in tool_words
                        or answer_only[s.value] >= both[s.value]
                        or {s.value, s.value.lower(), s.value.upper()} & closed):
                    continue  # instructions, constants, a closed set's member (an enum)
                kept.append(s)
                report.words[_rule_key(s, s.relations[0])] += 1
            else:
                rels = [r for r in s.relations if _rule_key(s, r) in rules]
                if len(rels) == 1:  # one explanation, or the value is left alone
                    kept.append(Slot(s.value, s.kind, rels, s.day))
                    report.numbers[_rule_key(s, rels[0])] += 1
        # a number explained through another number that is itself a slot: sums are
        # re-sampled together (the partner keeps its value unless it is a slot too)
        kept_all.append(kept)
        report.with_values += bool(kept)
    return kept_all, report


def _enums(obj) -> list:
    """The members of every `enum` in a JSON schema (tool parameters)."""
    out: list = []
    if isinstance(obj, dict):
        if isinstance(obj.get("enum"), list):
            out += obj["enum"]
        for v in obj.values():
            out += _enums(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _enums(v)
    return out


# -- new values ---------------------------------------------------------------------------------

def _pseudo_word(n: int, rng: random.Random) -> str:
    out = ""
    while len(out) < n:
        out += rng.choice(_CONS) + rng.choice(_VOWELS)
    return out[:n]


VOCAB_SHARE = 0.75  # of new names: a word of the model's vocabulary, the rest pseudo-words


def new_word(word: str, rng: random.Random, taken: set[str],
             vocab: dict[int, list[str]] | None = None) -> str:
    """A new value of the same shape: an id keeps its prefix and character classes, a name
    becomes a pronounceable pseudo-word of about the same length or, VOCAB_SHARE of the time
    where `vocab` is given (capitalised words by length), a word the tokenizer holds as one token
    after a space (" Leipzig"): copied into an answer, such a word is spelt in other pieces
    ('"Le', 'ipzig'), which pseudo-words (always several pieces) never show. Measured on the
    suite's shipping_api: not enough alone for every such word (benchmarks/README.md)."""
    near = [w for n in range(len(word) - 2, len(word) + 3) for w in (vocab or {}).get(n, ())]
    for _ in range(20):
        if "@" in word:
            user, _, host = word.partition("@")
            w = f"{_pseudo_word(max(3, len(user)), rng)}@{host}"
        elif "_" in word:
            head, _, tail = word.partition("_")
            w = f"{head}_{_same_classes(tail, rng)}"
        elif any(c.isdigit() for c in word):
            w = _same_classes(word, rng)
        elif word.isupper():
            w = "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWXYZ") for _ in word)
        else:
            if near and word[:1].isupper() and rng.random() < VOCAB_SHARE:
                w = rng.choice(near)
            else:
                w = _pseudo_word(max(3, len(word) + rng.randint(-1, 2)), rng).capitalize()
            if word[1:].isupper():
                w = w.upper()
        if w != word and w not in taken:
            return w
    return w


def _same_classes(s: str, rng: random.Random) -> str:
    out = []
    for c in s:
        if c.isdigit():
            out.append(rng.choice("0123456789"))
        elif c.isupper():
            out.append(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ"))
        elif c.islower():
            out.append(rng.choice("abcdefghijkmnopqrstuvwxyz"))
        else:
            out.append(c)
    return "".join(out)


def new_number(num: str, rng: random.Random, relations: list[tuple[str, object]],
               day: bool = False) -> str:
    """A new number of the same kind: a year stays a year, a day of a month stays a day,
    decimals keep their places, an integer keeps its number of digits (its range within them:
    training's 2-49 teaches 10-99 too); a zero-padded one stays under 10."""
    whole, _, frac = num.partition(".")
    if any(r[0] == "pad2" for r in relations):
        return str(rng.randint(1, 9))
    x = int(whole)
    if not frac and len(whole) == 4 and 1900 <= x <= 2100:
        return str(rng.randint(1950, 2080))
    d = len(whole.lstrip("0") or "0")
    if day:  # as many digits: an answer may pad days to two
        return str(rng.randint(10, 28) if len(whole) == 2 else rng.randint(1, 9))
    lo = 1 if d == 1 else 10 ** (d - 1)
    v = rng.randint(lo, 10 ** d - 1) if d > 1 or x > 0 else rng.randint(0, 9)
    if frac:
        return f"{v}.{''.join(rng.choice('0123456789') for _ in frac)}" if x or d > 1 \
            else f"0.{''.join(rng.choice('0123456789') for _ in frac)}"
    return str(v)


def _fmt(x: float, like) -> int | float:
    return int(round(x)) if isinstance(like, int) or float(x).is_integer() else round(x, 6)


# -- applying a variant -----------------------------------------------------------------------

def _sub_words(s: str, table: dict[str, str]) -> str:
    if not table:
        return s
    pat = re.compile(r"(?<![\w@.-])(" + "|".join(re.escape(k) for k in sorted(
        table, key=len, reverse=True)) + r")(?![\w@-])")
    return pat.sub(lambda m: table[m.group(1)], s)


def _sub_numbers(s: str, table: dict[float, str]) -> str:
    if not table:
        return s

    def rep(m):
        if _zero_padded(m.group(0)):
            return m.group(0)
        v = float(m.group(0))
        for k, new in table.items():
            if abs(k - v) < 1e-9:
                return new
        return m.group(0)
    return _NUM.sub(rep, s)


def _map_leaves(obj, fn):
    if isinstance(obj, dict):
        return {k: _map_leaves(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_leaves(v, fn) for v in obj]
    return fn(obj)


def variant(ex: Example, slots: list[Slot], rng: random.Random,
            vocab: dict[int, list[str]] | None = None) -> Example | None:
    """A copy of `ex` with every slot's value replaced (None when a replacement would be
    ambiguous)."""
    prompt_words: dict[str, str] = {}
    answer_words: dict[str, str] = {}
    prompt_nums: dict[float, str] = {}
    answer_nums: dict[float, float] = {}
    answer_pads: dict[str, str] = {}
    taken = {s.value for s in slots}
    new_vals: dict[str, str] = {}
    for s in slots:
        if s.kind == "word":
            w = new_word(s.value, rng, taken, vocab)
            taken.add(w)
            prompt_words[s.value] = w
            rel = s.relations[0][0]
            src = {"copy": s.value, "lower": s.value.lower(), "upper": s.value.upper()}[rel]
            answer_words[src] = {"copy": w, "lower": w.lower(), "upper": w.upper()}[rel]
        else:
            new_vals[s.value] = new_number(s.value, rng, s.relations, s.day)
            prompt_nums[float(s.value)] = new_vals[s.value]
    for s in slots:
        if s.kind != "number":
            continue
        rel, arg = s.relations[0]
        x, nx = float(s.value), float(new_vals[s.value])
        if rel == "scale":
            old, new = x * arg, nx * arg
        elif rel == "pad2":
            answer_pads[f"0{s.value}"] = f"0{new_vals[s.value]}"
            continue
        else:  # sum with a partner, re-sampled or not
            partner = next((new_vals[k] for k in new_vals if float(k) == arg), None)
            old, new = x + arg, nx + (float(partner) if partner else arg)
        if old in answer_nums and answer_nums[old] != new:
            return None
        answer_nums[old] = new
    out = copy.deepcopy(ex)

    def num_leaf(v):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return v
        for k, new in answer_nums.items():
            if abs(k - v) < 1e-9:
                return _fmt(new, v)
        return v

    def text_answer(t: str) -> str:
        t = _sub_words(t, answer_words)
        for old, new in answer_pads.items():
            t = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w.])", new, t)
        return _sub_numbers(t, {k: _num_text(v) for k, v in answer_nums.items()})

    def leaf(v):
        return text_answer(v) if isinstance(v, str) else num_leaf(v)

    for m in out.messages or []:
        if m["role"] in ("user", "tool"):
            m["content"] = _sub_numbers(_sub_words(m.get("content") or "", prompt_words),
                                        prompt_nums)
        elif m["role"] == "assistant":
            parsed = _answer_json(m.get("content") or "")
            if parsed is not None:
                m["content"] = json.dumps(_map_leaves(parsed, leaf), ensure_ascii=False,
                                          separators=_separators(m["content"]))
            elif m.get("content"):
                m["content"] = text_answer(m["content"])
            for c in m.get("tool_calls") or []:
                c["arguments"] = _map_leaves(c["arguments"], leaf)
    out.raw = {}
    return out if _calls_valid(out) else None


def _calls_valid(ex: Example) -> bool:
    """A variant must still be valid data: its tool calls satisfy their tools' schemas."""
    from afinar.data.chat import check_arguments

    tools = {t["name"]: t for t in ex.tools or []}
    return all(c["name"] not in tools or check_arguments(c["arguments"], tools[c["name"]]) is None
               for m in ex.messages or [] for c in m.get("tool_calls") or [])


def _num_text(x: float) -> str:
    return str(int(round(x))) if float(x).is_integer() else f"{x:g}"


def _separators(text: str) -> tuple[str, str]:
    """Keep the answer's own JSON spelling (compact or spaced)."""
    compact = '":' in text and '": ' not in text
    return (",", ":") if compact else (", ", ": ")


DECIMAL_SCALES = (1, 10, 100, 1000)  # a shift of the decimal point: written, not computed


def computed(slots: list[Slot]) -> bool:
    """Whether an answer computes a value from the prompt (minutes -> seconds, a sum) rather
    than copying it or shifting its decimal point (euros -> cents): arithmetic is harder to
    learn, so such examples get more variants."""
    return any(s.kind == "number" and (s.relations[0][0] == "sum" or (
        s.relations[0][0] == "scale" and s.relations[0][1] not in DECIMAL_SCALES))
        for s in slots)


def resample_values(examples: list[Example], seed: int, copies: int = 1,
                    computed_copies: int | None = None, words: list[str] | None = None
                    ) -> tuple[list[Example], AugmentReport]:
    """`copies` variants of every example that hands values from its prompt to its answer
    (`computed_copies` of one that computes a value from them; default the same),
    deterministic for a seed, and what was found. `words`: capitalised words to draw
    VOCAB_SHARE of the new names from (the model's one-token words: vocabulary_words)."""
    slots, report = _plan(examples)
    vocab: dict[int, list[str]] = {}
    for w in sorted(set(words or ())):
        vocab.setdefault(len(w), []).append(w)
    rng = random.Random(seed * 1_000_003 + 17)
    out = []
    most = max(copies, computed_copies or copies)
    for k in range(most):
        for ex, s in zip(examples, slots, strict=True):
            if not s or k >= (computed_copies or copies if computed(s) else copies):
                continue
            v = variant(ex, s, rng, vocab)
            if v is not None:
                out.append(v)
    report.variants = len(out)
    report.computed = sum(1 for s in slots if s and computed(s))
    return out, report


def vocabulary_words(tokenizer, limit: int = 12) -> list[str]:
    """Capitalised words (4 to `limit` letters) that the tokenizer holds as one token after a
    space and splits without it: the names a prompt carries whole (" Leipzig") and an answer
    must spell in pieces ('"Le', 'ipzig'). A word that is one token either way teaches
    nothing a pseudo-word would not."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    pat = re.compile(rf" [A-Z][a-z]{{3,{limit - 1}}}")
    words = sorted({t[1:] for t in texts if pat.fullmatch(t)})
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    return [w for w, ids in zip(words, pieces, strict=True) if len(ids) > 1]

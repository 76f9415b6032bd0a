"""Corpora for continued pre-training and training from scratch.

A corpus is a JSONL file of `{"input": ...}` (Bedrock's format) or `{"text": ...}` records, a
plain-text or Markdown file (one document), or a folder of such files (recursively, in name
order). Documents are streamed, tokenized one at a time with EOS after each, and appended to a
token file on disk (uint32), so a corpus larger than memory is fine; fixed-length blocks are
read back from it by memory map. Inside a block, position ids restart after each EOS: with
transformers' packed-sequence masks a document never attends to the one before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from afinar import jsonutil
from afinar.data.tokenize import Encoded
from afinar.errors import DataError, Issue

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
RECORD_SUFFIXES = {".jsonl"}
TEXT_FIELDS = ("input", "text")
MAX_ISSUES = 200


def corpus_files(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"corpus not found: {p}", hint="give a .jsonl, .txt or .md file, or a "
                        "folder of them")
    if p.is_file():
        if p.suffix.lower() not in TEXT_SUFFIXES | RECORD_SUFFIXES:
            raise DataError(f"{p}: a corpus file must be .jsonl ({{\"input\"}} or {{\"text\"}} "
                            f"records), .txt or .md; got '{p.suffix}'")
        return [p]
    from afinar.storage import files_under
    files = [f for f in files_under(p) if f.suffix.lower() in TEXT_SUFFIXES | RECORD_SUFFIXES]
    if not files:
        raise DataError(f"{p}: the folder holds no .jsonl, .txt or .md files")
    return files


def iter_documents(path: str | Path, issues: list[Issue]) -> Iterator[tuple[str, str]]:
    """(where, text) for each document; problems go to `issues` with file, line and field."""
    for f in corpus_files(path):
        if f.suffix.lower() in TEXT_SUFFIXES:
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                issues.append(Issue(f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                    file=str(f), code="encoding"))
                continue
            if text.strip():
                yield str(f), text
            continue
        with f.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    rec = jsonutil.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    issues.append(Issue("not valid UTF-8", n, file=str(f), code="encoding"))
                    continue
                except ValueError as e:
                    issues.append(Issue(f"malformed JSON: {e}", n, file=str(f),
                                        code="malformed_json"))
                    continue
                key = next((k for k in TEXT_FIELDS if isinstance(rec, dict) and k in rec), None)
                if key is None:
                    issues.append(Issue(f"expected a record with 'input' or 'text'; got keys "
                                        f"{sorted(rec)[:5] if isinstance(rec, dict) else rec!r}",
                                        n, "input", file=str(f), code="missing_field"))
                    continue
                text = rec[key]
                if not isinstance(text, str) or not text.strip():
                    issues.append(Issue("must be a non-empty string", n, key, file=str(f),
                                        code="empty" if isinstance(text, str) else "wrong_type"))
                    continue
                yield f"{f}:{n}", text
                if len(issues) > MAX_ISSUES:
                    return


@dataclass
class TokenBlocks(Sequence):
    """Fixed-length training blocks over a token file; a Sequence of Encoded."""

    tokens: np.ndarray  # uint32 memmap
    block_size: int
    eos_id: int | None
    n_blocks: int

    def __len__(self) -> int:
        return self.n_blocks

    def block_len(self, i: int) -> int:
        return min(self.block_size, len(self.tokens) - i * self.block_size)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not 0 <= i < self.n_blocks:
            raise IndexError(i)
        ids = self.tokens[i * self.block_size:(i + 1) * self.block_size].astype(np.int64)
        pos = positions(ids, self.eos_id)
        ids = ids.tolist()
        return Encoded(ids, list(ids), False, i, position_ids=pos)


def positions(ids: np.ndarray, eos_id: int | None) -> list[int]:
    """0, 1, 2, ... restarting right after each EOS."""
    n = len(ids)
    idx = np.arange(n)
    if eos_id is None:
        return idx.tolist()
    starts = np.zeros(n, dtype=np.int64)
    after_eos = np.nonzero(ids[:-1] == eos_id)[0] + 1
    starts[after_eos] = after_eos
    return (idx - np.maximum.accumulate(starts)).tolist()


@dataclass
class Corpus:
    """What the trainer needs of a prepared corpus (the same face as PreparedData)."""

    path: str
    encoded: TokenBlocks
    n_documents: int
    n_tokens_total: int
    schema: str = "corpus"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(self.encoded.block_len(i) for i in range(len(self.encoded)))

    def lengths(self) -> list[int]:
        return [self.encoded.block_len(i) for i in range(len(self.encoded))]

    def label_counts(self) -> list[int]:
        return [n - 1 for n in self.lengths()]

    def summary(self) -> dict:
        return {"path": self.path, "schema": self.schema, "documents": self.n_documents,
                "tokens": self.n_tokens_total, "examples": len(self.encoded),
                "blocks": len(self.encoded),
                "block_size": self.encoded.block_size}


def prepare_corpus(path: str, tokenizer, block_size: int, work_dir: Path,
                   role: str = "training", progress=None) -> Corpus:
    """Tokenize a corpus into `work_dir/<role>.tokens` and cut it into blocks. Every problem
    in the files is reported at once (file, line, field) before any training."""
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{role}.tokens"
    issues: list[Issue] = []
    eos = tokenizer.eos_token_id
    n_docs, n_tok = 0, 0
    with out.open("wb") as fh:
        for _where, text in iter_documents(path, issues):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if eos is not None:
                ids.append(eos)
            fh.write(np.asarray(ids, dtype=np.uint32).tobytes())
            n_docs += 1
            n_tok += len(ids)
            if progress and n_docs % 100 == 0:
                progress(n_docs, n_tok)
    if issues:
        raise DataError(f"{path}: {len(issues)} problem(s) in the {role} corpus; nothing was "
                        f"trained", issues, hint="fix or remove those records")
    if n_docs == 0:
        raise DataError(f"{path}: the {role} corpus is empty (no non-blank documents)")
    tokens = np.memmap(out, dtype=np.uint32, mode="r")
    warnings = []
    if n_tok >= block_size:
        n_blocks = n_tok // block_size
        dropped = n_tok - n_blocks * block_size
        if dropped:
            warnings.append(f"the last {dropped} {role} tokens do not fill a block of "
                            f"{block_size} and are not used")
    else:
        n_blocks = 1
        warnings.append(f"the {role} corpus has only {n_tok} tokens, less than one block of "
                        f"{block_size}")
    return Corpus(str(path), TokenBlocks(tokens, block_size, eos, n_blocks), n_docs, n_tok,
                  warnings=warnings)

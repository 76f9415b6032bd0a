"""Sentence embeddings through sentence-transformers: all-MiniLM-L6-v2 from its PyPI package by
default (offline), any sentence-transformers model (hub id or local path) otherwise.

Vectors are L2-normalised float32, so cosine similarity is a dot product. The torch thread count
is set explicitly (`threads`): under contention the default falls sharply on small CPUs.
"""

from __future__ import annotations

import threading

import numpy as np

from afinar.config import Settings
from afinar.errors import ModelLoadError

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


def embedding_model_path(identifier: str, settings: Settings) -> str:
    """Registry id (or its hub id) -> the installed directory; anything else is passed to
    sentence-transformers as is (a local path or a hub id)."""
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin

    for entry in BUILTIN_MODELS.values():
        if entry.kind == "encoder" and identifier.lower() in (entry.id, entry.hub_id.lower(),
                                                              entry.name.lower()):
            return str(ensure_builtin(entry, settings))
    return identifier


def check_embedding_model(identifier: str, settings: Settings, confined: bool = False) -> str:
    """Fail now, not at the first sync, for an embedding model that cannot load: a registry
    encoder, an alias of one, a local directory (only under the roots when `confined`, as for
    ids that came over HTTP), or (not confined) anything sentence-transformers loads."""
    from afinar.errors import ModelNotFoundError
    from afinar.models.registry import BUILTIN_MODELS, path_under_roots

    ident = settings.model_aliases.get(identifier, identifier)
    encoders = [e for e in BUILTIN_MODELS.values() if e.kind == "encoder"]
    if any(ident.lower() in (e.id, e.hub_id.lower(), e.name.lower()) for e in encoders):
        return identifier
    if ident != identifier:  # the operator's alias: trusted, but it must load
        load_embedder(ident, settings)
        return identifier
    if confined:
        if path_under_roots(ident, settings) is None:
            raise ModelNotFoundError(
                f"embedding model '{identifier[:200]}' is not available on this server",
                hint=f"use {', '.join(e.id for e in encoders)}, map a name to a local model in "
                     f"[model_aliases], or place a sentence-transformers folder under "
                     f"allowed_roots")
        return identifier
    load_embedder(ident, settings)
    return identifier


class Embedder:
    def __init__(self, path: str, threads: int | None = None, batch_size: int = 64,
                 device: str | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        from afinar.inference.engine import engine_running
        if engine_running():  # see encode
            torch.set_num_threads(1)
        elif threads:
            torch.set_num_threads(threads)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
        try:
            self.model = SentenceTransformer(path, device=device)
        except Exception as e:  # OSError, ValueError, ... from the hub/loader
            raise ModelLoadError(f"cannot load embedding model '{path}': {e}",
                                 hint="pass a sentence-transformers model directory or hub "
                                      "id; the default is all-minilm-l6-v2") from e
        self.tokenizer = self.model.tokenizer
        self.dim = int(self.model.get_embedding_dimension())
        self.max_length = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, normalised. Sentence-transformers sorts by length inside the call,
        so one call over many documents' chunks pads least."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        from afinar.inference.engine import engine_running
        if engine_running():  # one thread here: the engine's thread owns the parallel team
            torch.set_num_threads(1)
        with self.lock:
            v = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(v, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return sum(len(x) for x in ids)

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors as lists and the token count (what /v1/embeddings reports)."""
        return self.encode(texts).tolist(), self.count_tokens(texts)


def load_embedder(identifier: str, settings: Settings, batch_size: int = 64) -> Embedder:
    return Embedder(embedding_model_path(identifier, settings), threads=settings.threads,
                    batch_size=batch_size)

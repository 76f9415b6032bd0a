"""Sentence embeddings with all-MiniLM-L6-v2 (mean pooling over tokens, L2-normalised, as the
sentence-transformers model is configured), batched."""

from __future__ import annotations

import threading

import torch


class Embedder:
    def __init__(self, path: str, max_length: int = 256, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size
        self.lock = threading.Lock()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        out, n_tok = [], 0
        with self.lock:
            for s in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[s:s + self.batch_size], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
                n_tok += int(enc["attention_mask"].sum())
                h = self.model(**enc).last_hidden_state  # (B, T, H)
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1)
                out += torch.nn.functional.normalize(v, dim=-1).tolist()
        return out, n_tok

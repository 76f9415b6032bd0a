"""Running a sequence classifier: class probabilities for texts, batched."""

from __future__ import annotations

import inspect

import torch


@torch.no_grad()
def predict_ids(model, tokenizer, texts: list[str], max_length: int = 512,
                batch_size: int = 32) -> torch.Tensor:
    """Class probabilities, batched, in input order."""
    model.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(texts[s:s + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        accepted = inspect.signature(model.forward).parameters
        enc = {k: v.to(model.device) for k, v in enc.items() if k in accepted}
        out.append(model(**enc).logits.float().softmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)

"""Causal-LM loss computed only where there are labels.

The output projection (hidden -> vocabulary) is applied to the labelled positions only, not to
every position as `model(labels=...)` does: for prompt-heavy data (instructions, chat) most
positions carry no loss, and on SmolLM2-135M the 49k-word output layer is ~20% of the forward
FLOPs. Models whose logits need more than the output layer (soft-capping, logit scaling) take
the standard path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afinar.data.tokenize import IGNORE_INDEX


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class SelectiveLMLoss(nn.Module):
    """Wraps a (PEFT) causal LM; forward returns (summed loss, labelled tokens, correct)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        lm = _causal_lm(model)
        cfg = lm.config
        self.selective = (getattr(cfg, "final_logit_softcapping", None) is None
                          and getattr(cfg, "logit_scale", None) is None
                          and hasattr(lm, "get_decoder"))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None):
        lm = _causal_lm(self.model)
        y = labels[:, 1:]
        sel = y != IGNORE_INDEX
        if self.selective:
            hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids,
                                      use_cache=False).last_hidden_state  # (B, T, H)
            logits = lm.get_output_embeddings()(hidden[:, :-1][sel])  # (N, V)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False)
            logits = out.logits[:, :-1][sel]
        target = y[sel]
        loss_sum = F.cross_entropy(logits.float(), target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        return loss_sum, sel.sum(), correct

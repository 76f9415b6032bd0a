"""bf16 linear layers on CPU through oneDNN's prepacked weights, for serving.

Decoding a small model on a CPU is mostly matrix-vector products (80% of a step for
SmolLM2-135M), and `F.linear` in bf16 reaches half the memory bandwidth fp32 does for a few
rows: measured on a 2-core AVX512-BF16/AMX CPU, a cold 1536x576 bf16 weight took 148 us for one
row against 85-93 us prepacked in oneDNN's blocked layout (65-76 us for 4-32 rows, against
140-150). The whole model, one decoding step: 32.3 -> 24.7 ms for 1 row, 41.2 -> 33.2 ms for 16,
with identical logits. This is what inductor's CPU "freezing" does to linear layers, without a
compile step at load time.

Only where it pays: bf16 weights on a CPU whose oneDNN runs bf16 natively. fp32 prepacked was
measured slower (154 us against 135), so fp32 models keep `F.linear`. The original weight is
replaced by a zero-stride view of the same shape and dtype (its memory freed, its shape still
there for code that reads it), except where another module shares it (tied embeddings).
"""

from __future__ import annotations

import types

import torch


def available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _forward(self, x):
    return torch.ops.mkldnn._linear_pointwise(x, self._afinar_packed, self.bias, "none", [], "")


def pack(model) -> int:
    """Prepack the bf16 CPU linear layers of an inference model; returns how many."""
    if not available():
        return 0
    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False)}
    n = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if (not isinstance(m, torch.nn.Linear) or w is None or w.dtype != torch.bfloat16
                or w.device.type != "cpu"):
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 16)
        x = torch.randn(2, m.in_features, dtype=torch.bfloat16)
        want = torch.nn.functional.linear(x, w.detach(), m.bias)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, m.bias, "none", [], "")
        if not torch.allclose(want.float(), got.float(), rtol=2e-2, atol=2e-2):
            return n  # a oneDNN that computes otherwise: leave the rest as they are
        m._afinar_packed = packed
        m.forward = types.MethodType(_forward, m)
        if id(w) not in shared:
            m.weight = torch.nn.Parameter(w.detach().new_zeros(1).expand(w.shape),
                                          requires_grad=False)
        n += 1
    return n

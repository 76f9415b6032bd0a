"""Device, precision and thread choices, shared by training and inference (below both)."""

from __future__ import annotations

import os

import torch


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls are several times faster than fp32. Without them
    (e.g. AVX2-only CPUs) bf16 matmuls are emulated and hundreds of times slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def choose_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(preference: str, device: str) -> tuple[torch.dtype, str | None]:
    """Returns the compute dtype and, when a bf16 request is overridden, why."""
    if preference == "fp32":
        return torch.float32, None
    fast = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_fast_bf16()
    if fast:
        return torch.bfloat16, None
    if preference == "bf16":
        return torch.float32, ("bf16 requested but this hardware has no fast bf16 "
                               "(no AMX/AVX512-BF16): using fp32")
    return torch.float32, None


def set_threads(n: int | None) -> int:
    n = n or int(os.environ.get("AFINAR_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n

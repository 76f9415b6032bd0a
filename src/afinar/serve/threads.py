"""Blocking work off the event loop, in two pools. Inference calls and waits (a request queued
behind others, a stream between tokens, an embedding batch) run under their own limiter, so
they never hold the threads the control plane needs: with 100 chats waiting, ListJobs and a
data check answer as on an idle server. Everything else uses Starlette's default pool."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable

import anyio
import anyio.to_thread

INFERENCE_THREADS = 512  # waits, not compute: the engine's own thread does the work
_limiter: anyio.CapacityLimiter | None = None


def _inference_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # created inside the event loop that uses it
        _limiter = anyio.CapacityLimiter(INFERENCE_THREADS)
    return _limiter


async def inference(fn, *args, **kw):
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kw),
                                          limiter=_inference_limiter())


async def inference_iter(items: Iterable) -> AsyncIterator:
    """A blocking iterator (a token stream) consumed from the inference pool."""
    it = iter(items)
    done = object()
    while True:
        x = await inference(next, it, done)
        if x is done:
            return
        yield x

"""Reading a request's body: at most so many at once, and none that stalls.

A body is read whole before anything is done with it (an image is decoded from its bytes), so
each one being read holds up to --max-upload-mb. Unbounded, a client sending slowly, or not
at all, kept that memory for good (12 stalled 40 MB uploads pinned 540 MB). So bodies are read
under a gate (503 + Retry-After beyond it, as searches are) and a body from which nothing
arrives for BODY_IDLE_S ends in a 408: its reader is cancelled, its bytes dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

from aiohttp import web

from ..errors import ImgSearchError
from .gate import Gate

# Bodies read at once: 8 uploads of the default 50 MB limit (67 MB as base64) are ~0.5 GB.
MAX_READING = 8
# Seconds a body may send nothing before it is given up (a slow link still sends something).
BODY_IDLE_S = 30.0
# Bodies from this size (or of unknown length) take a place at the gate and have the idle
# timer: smaller ones (a search by a 512-d vector is ~10 KB of JSON) hold next to nothing.
GATED_FROM = 64 << 10
BODY_GATE = web.AppKey("body_gate", Gate)


def body_gate() -> Gate:
    return Gate("upload", MAX_READING, retry_after=1)


@asynccontextmanager
async def reading(request: web.Request, idle_s: float | None = None) -> AsyncIterator[None]:
    """Read the body inside this: a place at the app's body gate (where it has one), and a 408
    once nothing has arrived for `idle_s` (BODY_IDLE_S) seconds."""
    size = request.content_length
    if size is not None and size < GATED_FROM:  # most requests (a search by vector, ~10 KB):
        yield  # next to no memory to bound, and the timer cost ~0.05-0.1 ms a search
        return  # (bench/request_overhead.py)
    gate = request.app.get(BODY_GATE)
    idle_s = BODY_IDLE_S if idle_s is None else idle_s
    loop = asyncio.get_running_loop()
    content = request.content
    with gate.enter() if gate is not None else nullcontext():
        try:
            async with asyncio.timeout(None) as deadline:
                seen, last = content.total_bytes, loop.time()
                watch: asyncio.TimerHandle | None = None

                def look() -> None:
                    # Bytes arrived since the last look push the deadline on; else it stands.
                    nonlocal seen, last, watch
                    if deadline.expired():  # the reader is being cancelled already
                        return
                    if content.total_bytes != seen:
                        seen, last = content.total_bytes, loop.time()
                    deadline.reschedule(last + idle_s)
                    watch = loop.call_later(min(1.0, idle_s), look)

                look()
                try:
                    yield
                finally:
                    if watch is not None:
                        watch.cancel()
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ImgSearchError(f"request body: nothing arrived for {idle_s:g} s", 408) from None

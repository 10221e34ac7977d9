"""The one way a handler runs blocking work (on the loop's default thread pool), and waits for
work running elsewhere (a job) without holding a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
POLL_S = 0.1
FIRST_POLL_S = 0.001  # polls start here and double up to POLL_S: a one-image add is not
# answered 100 ms late, and a long job costs ten wake-ups a second


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` off the event loop and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(fn, *args, **kwargs))


async def until_set(event: threading.Event) -> None:
    """Wait for a job's `ended` event without holding a thread (for an hours-long job): woken
    at once by an event that calls back (`jobs.Ended`), by polling any other."""
    if event.is_set():
        return
    on_set = getattr(event, "on_set", None)
    if callable(on_set):
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        on_set(partial(_wake, loop, woken))
        await woken.wait()
        return
    delay = FIRST_POLL_S
    while not event.is_set():
        await asyncio.sleep(delay)
        delay = min(POLL_S, delay * 2)


def _wake(loop: asyncio.AbstractEventLoop, woken: asyncio.Event) -> None:
    """Set `woken` on its loop from another thread (a loop closed meanwhile has no waiter)."""
    try:
        loop.call_soon_threadsafe(woken.set)
    except RuntimeError:
        pass

"""SIGTERM and SIGINT while the daemon starts: it exits at once.

aiohttp turns both signals into a graceful exit, which waits for what the event loop awaits.
While the service opens, that is the model's load and the index's (a rebuild from SQLite at
10M takes minutes, a training longer), on a thread that cannot be stopped: a SIGTERM waited
for all of it, and a service opened only to be closed. Until the service is up nothing has
been served and nothing is held that SQLite does not have (a kill -9 at any point loses
nothing: the fault tests), so the process exits there and then, status 0 as a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def quit_while_starting(_app: web.Application) -> None:
    """on_startup, first: until `stop_gracefully`, a signal ends the process at once."""
    _handle(_quit_now)


async def stop_gracefully(_app: web.Application) -> None:
    """on_startup, once the service is up: a signal stops the daemon as aiohttp does
    (requests finished, jobs interrupted, the service closed)."""
    _handle(_graceful_exit)


def _handle(handler: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError):  # not on this platform, not the main thread
            return


def _quit_now(sig: int) -> None:
    log.warning(
        "%s during start-up: exiting now (nothing was served yet; SQLite holds every write)",
        signal.Signals(sig).name,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(0)


def _graceful_exit(_sig: int) -> None:
    raise web.GracefulExit()

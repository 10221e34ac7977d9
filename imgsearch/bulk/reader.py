"""An import's shards read in a child process: the Parquet decoding and the rows' checks out of
the daemon's interpreter lock.

In the daemon, the reading thread held the lock for most of its work (pyarrow's conversions to
Python lists, the checks of every row) and a request that arrived meanwhile waited for it: at
10M rows, `/stats` p99 during an import stayed ~7-9 ms with the reader the place met most often
when the event loop woke late (docs/BENCHMARKS.md). Here `python -m imgsearch.bulk.reader`
does that work (`batches.shard_batches`, at the background priority) and sends each shard's
checked record batch back through its stdout: a length-prefixed pickle of PART_ROWS rows at
most, then `None` at the end. The daemon joins them into write batches (`batches.groups`) as
before. Parts are small so that unpickling one, the only piece of the reading left in the
daemon (and one that holds the lock), takes a fraction of a millisecond.

The child lives as long as its reader: `ChildReader.close` (an import that ends, is cancelled
or fails) kills it, and a daemon that dies takes its pipe with it, so the child's next write
fails and it exits. A child that dies first is an error of the import (its exit status named),
unless the import was being stopped anyway.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..cpu import lower_priority
from .batches import Unreadable, shard_batches
from .format import Rename, RowBatch, ShardInfo

PART_ROWS = 2_000
HEADER_BYTES = 8
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class Request:
    """What the child reads: these shards, each from the row `done` names, through `rename`."""

    infos: list[ShardInfo]
    done: dict[str, int]
    part_rows: int
    rename: Rename | None


@dataclass(frozen=True)
class Failed:
    """The child's last item when it could not go on (an unexpected error, as text)."""

    message: str


Item = tuple[ShardInfo, RowBatch] | Unreadable


class ReaderError(RuntimeError):
    """The reading process failed or died before its end."""


class ChildReader:
    """The items of `shard_batches(infos, done, part_rows, rename)`, read by a child process."""

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        done: dict[str, int],
        rename: Rename | None = None,
        *,
        part_rows: int = PART_ROWS,
        stop: threading.Event | None = None,
    ) -> None:
        self.stop = stop or threading.Event()
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        stdin, self.out = self.proc.stdin, self.proc.stdout
        assert stdin is not None and self.out is not None
        request = Request(list(infos), dict(done), part_rows, rename)
        try:
            stdin.write(pickle.dumps(request, pickle.HIGHEST_PROTOCOL))
            stdin.close()
        except BrokenPipeError:  # died at once: __iter__ says how
            pass

    def __iter__(self) -> Iterator[Item]:
        assert self.out is not None
        while True:
            item = _receive(self.out)
            if item is None or isinstance(item, Failed) or item is _EOF:
                break
            yield item
        if item is None:  # the end: the child exits
            self.proc.wait(KILL_WAIT_S)
            return
        if isinstance(item, Failed):
            raise ReaderError(f"the import's reader failed: {item.message}")
        code = self.proc.wait()
        if not self.stop.is_set():
            raise ReaderError(f"the import's reader process ended early (exit status {code})")

    def close(self) -> None:
        """Stop the child if it still runs, and wait for it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(KILL_WAIT_S)
        if self.out is not None:
            self.out.close()

    def __enter__(self) -> ChildReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EOF = object()


def _receive(stream: IO[bytes]) -> Any:
    """The next item of the stream, or _EOF where it ends before one."""
    header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return _EOF
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        return _EOF
    return pickle.loads(data)


def _send(stream: IO[bytes], item: Any) -> None:
    data = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(HEADER_BYTES, "little"))
    stream.write(data)


def main() -> int:
    """The child: read the request from stdin, send the items to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when the child ends
    lower_priority()  # this thread and the ones it starts (pyarrow's) yield to requests
    out = sys.stdout.buffer
    try:
        request: Request = pickle.load(sys.stdin.buffer)
        for item in shard_batches(request.infos, request.done, request.part_rows, request.rename):
            if isinstance(item, Unreadable):  # its error as text: any exception pickles so
                item = Unreadable(item.info, OSError(str(item.error)))
            _send(out, item)
        _send(out, None)
        out.flush()
    except BrokenPipeError:  # the daemon closed its end (or died): nothing left to do
        _quiet_stdout()
        return 0
    except Exception as exc:  # any other: said to the daemon, which fails the import
        try:
            _send(out, Failed(f"{type(exc).__name__}: {exc}"))
            out.flush()
        except BrokenPipeError:
            _quiet_stdout()
        raise
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's flush at exit would fail on the pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # run as `-m`: Failed and the rest as the daemon names them
    from imgsearch.bulk.reader import main as child_main

    sys.exit(child_main())

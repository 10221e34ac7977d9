"""What a bulk import's SQLite writes cost a row: the store's upsert in 20,000-row batches.

    python bench/sqlite_writes.py --rows 1000000 --rounds 2
    python bench/sqlite_writes.py --rows 400000 --rounds 2 --busy \
        --variants "row by row" "full sha256 index"
    python bench/sqlite_writes.py --rows 400000 --rounds 3 --daemon \
        --variants "one statement a batch" columns

For each variant a fresh database (the current schema) under --tmp is filled with --rows rows
as bench/scale.py's shards make them (paths in folders of 10,000, a 512-d float16 vector, no
sha256: the import's stand-in) through `Images.upsert`, the call the import makes for each
batch; the variants alternate, --rounds times. "full sha256 index" is the schema and code as
they are, every row's hash indexed (the stand-ins of hashless imports too); "known hashes only"
replaces that index with a partial one that leaves the stand-ins out (checked 2026-12-04 and
not adopted: see docs/BENCHMARKS.md); "row by row" writes as the store did before 2026-12-05:
the new rows with one executemany (one statement step a row) in place of multi-row INSERTs,
the vectors stacked by np.array (a copy a row) in place of store.rows.stacked; "columns" hands
the store its batch as columns (store.Rows, as an import does since 2026-12-05), the others as
a list of NewImage (a row object each, as the import did before and `/add` does); "one
statement a batch" is "columns" with as many rows a multi-row INSERT as SQLite binds (the
store before it bound upsert.BIND_ROWS at most: 250,000 parameters on Debian's SQLite, so a
whole batch in one statement). Every variant also reports the longest pause of a thread
that wakes every millisecond (bench/gil_holds.Ticker) while the upserts run: how long the
writer held the GIL at a stretch (the event loop's wait during an import). `--busy`: a Python
thread runs beside each upsert (building lists, as an import's reader does), so the writer
must take the GIL back after each of its statement steps and row copies; the GIL is then
handed over as the daemon has it (cli.SWITCH_INTERVAL_S). `--daemon`: that, and the garbage
collector as the daemon has it (the heap so far frozen, cli.GC_YOUNG). Reports the writing
thread's CPU and the wall microseconds a row over the last half of the rows (the database past
its first pages), and with --busy how many loops the busy thread made. Appends one JSON line to
bench/out/sqlite_writes.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import cpu_model, progress, record  # noqa: E402
from gil_holds import Ticker  # noqa: E402

BATCH = 20_000
DIM = 512
PARTIAL_INDEX = (
    "DROP INDEX images_sha256",
    "CREATE INDEX images_sha256 ON images(sha256) WHERE substr(sha256, 1, 8) <> 'unknown:'",
)
VARIANTS = {
    "full sha256 index": (),
    "known hashes only": PARTIAL_INDEX,
    "row by row": (),
    "columns": (),
    "one statement a batch": (),
}


def executemany(conn: Any, columns: Sequence[Sequence[object]]) -> None:
    """The store's inserts before multi-row INSERTs: one executemany, a step a row."""
    from imgsearch.store import upsert

    conn.executemany(upsert.insert_sql(1), zip(*columns, strict=True))


def np_stacked(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The store's stacking of vectors before upsert.stacked: np.array, a copy a row."""
    return np.array(vectors, dtype=np.float32)


class Busy:
    """A Python thread that builds lists while it runs (an import's reader, as the GIL sees
    it); `loops` counts what it did."""

    def __init__(self) -> None:
        self.loops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            [n * n for n in range(2_000)]
            self.loops += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.loops


def fill(folder: Path, rows: int, variant: str, busy: bool) -> dict[str, float]:
    """Write `rows` rows into a new store in `folder`; us a row (the writing thread's CPU,
    wall) past the middle."""
    from imgsearch.store import rows as columns
    from imgsearch.store import upsert

    insert: Callable[[Any, Sequence[Sequence[object]]], None] = upsert.insert_rows
    stack, bind = columns.stacked, upsert.BIND_ROWS
    if variant == "row by row":
        upsert.insert_rows, columns.stacked = executemany, np_stacked  # type: ignore[assignment]
    if variant == "one statement a batch":
        upsert.BIND_ROWS = 1 << 30
    try:
        as_columns = variant in ("columns", "one statement a batch")
        return _fill(folder, rows, VARIANTS[variant], busy, as_columns)
    finally:
        upsert.insert_rows, columns.stacked = insert, stack  # type: ignore[assignment]
        upsert.BIND_ROWS = bind


def _fill(
    folder: Path, rows: int, statements: tuple[str, ...], busy: bool, columns: bool
) -> dict[str, float]:
    from imgsearch.store import UNKNOWN_SHA256, FileFacts, NewImage, Rows, Store

    store = Store(folder / "db.sqlite3")
    with store.db.write() as conn:
        for statement in statements:
            conn.execute(statement)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cpu = wall = pause = 0.0
    loops = 0
    ticker = Ticker()
    for b in range(rows // BATCH):
        paths = [
            f"/imgsearch-scale/f{(b * BATCH + j) // 10_000:04d}/{j % 10_000:05d}.jpg"
            for j in range(BATCH)
        ]
        hashes = [f"{UNKNOWN_SHA256}{path}" for path in paths]
        batch: list[NewImage] | Rows
        if columns:
            n = len(paths)
            batch = Rows(
                paths, [1000] * n, [1] * n, hashes, [64] * n, [64] * n, [None] * n, vectors
            )
        else:
            facts = (FileFacts(p, 1000, 1, h, 64, 64) for p, h in zip(paths, hashes, strict=True))
            batch = [NewImage(f, vectors[j]) for j, f in enumerate(facts)]
        beside = Busy() if busy else None
        ticker.gap = 0.0
        c0, t0 = time.thread_time(), time.perf_counter()
        store.images.upsert(batch)
        c1, t1 = time.thread_time(), time.perf_counter()
        done = beside.stop() if beside is not None else 0
        if b >= rows // BATCH // 2:
            cpu, wall, loops = cpu + c1 - c0, wall + t1 - t0, loops + done
            pause = max(pause, ticker.gap)
    ticker.close()
    store.close()
    counted = rows - rows // BATCH // 2 * BATCH
    out = {
        "cpu_us": round(cpu / counted * 1e6, 2), "wall_us": round(wall / counted * 1e6, 2),
        "longest_pause_ms": round(pause * 1000, 1),
    }  # fmt: skip
    return {**out, "busy_loops": loops} if busy else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="where the databases go (default: $TMPDIR)")
    parser.add_argument("--busy", action="store_true", help="a busy Python thread beside")
    parser.add_argument("--daemon", action="store_true", help="the daemon's interpreter settings")
    parser.add_argument(
        "--variants", nargs=2, choices=list(VARIANTS), default=list(VARIANTS)[:2],
        help="the two variants compared (the first is the base of the ratios)",
    )  # fmt: skip
    args = parser.parse_args()
    from imgsearch.cli import SWITCH_INTERVAL_S, tune_interpreter

    if args.daemon:
        tune_interpreter()
    elif args.busy:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    result: dict[str, Any] = {
        "bench": "sqlite_writes", "cpu": cpu_model(), "load": os.getloadavg(), "rows": args.rows,
        "busy": args.busy, "daemon": args.daemon,
    }  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                runs[name].append(fill(Path(tmp), args.rows, name, args.busy))
            progress(f"{name}: {runs[name][-1]}")
    result["runs"] = runs
    for figure in ("cpu_us", "wall_us"):
        base, new = (min(r[figure] for r in runs[name]) for name in args.variants)
        result[f"{figure}_ratio"] = round(base / new, 3)
    result["load_after"] = os.getloadavg()
    record(result, "sqlite_writes")


if __name__ == "__main__":
    main()

"""Where an add's time goes: a timeline of one `Ingester.add` in-process, span by span.

Runs the daemon's own Service (same defaults: decode pool, model lanes, precompute) on a
folder of images, without HTTP, and records every decode (read + hash + decode + prepare), every
model call, every write and every background precompute, with its wall time and its thread's
CPU time. Prints per round: images/s, the process's CPU per image and how many cores it kept
busy, the CPU per stage inside the pipeline (to compare with bench/ingest.py's stage table,
measured one file at a time), each model call's start and end, and how long 0, 1, 2... spans
were running at once (a tail where one model call runs alone shows as time at 1).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ingest_timeline.py [--model efficientnet-lite0]
        [--images 32] [--rounds 2] [--precompute auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import generate_jpegs

from imgsearch import precompute
from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.ingest.core import Ingester
from imgsearch.service import Service


@dataclass(frozen=True)
class Span:
    thread: str
    kind: str
    start: float
    end: float
    cpu: float


class Recorder:
    """Wraps methods so that each call is recorded as a Span (thread-safe)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def wrap(self, cls: type, name: str, kind: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                span = Span(
                    threading.current_thread().name,
                    kind,
                    t0,
                    time.perf_counter(),
                    time.thread_time() - c0,
                )
                with self._lock:
                    self.spans.append(span)

        setattr(cls, name, timed)


def report(spans: Sequence[Span], n: int, t0: float, t1: float, cpu: float) -> None:
    wall = t1 - t0
    print(
        f"{n / wall:.1f} img/s, wall {wall * 1000:.0f} ms, process CPU {cpu * 1000 / n:.1f} "
        f"ms/img, cores busy {cpu / wall:.2f}"
    )
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for s in spans:
        entry = totals[s.kind]
        entry[0] += 1
        entry[1] += s.cpu
    for kind, (count, used) in sorted(totals.items()):
        print(
            f"  {kind:<10} {int(count):3d} calls, CPU {used * 1000:6.0f} ms "
            f"({used * 1000 / count:.1f} each, {used * 1000 / n:.1f} per image of the add)"
        )
    calls = sorted((s for s in spans if s.kind == "embed"), key=lambda s: s.start)
    for s in calls:
        start, end = (s.start - t0) * 1000, (s.end - t0) * 1000
        print(f"    model call {s.thread}: {start:6.0f} -> {end:6.0f} ms")
    decoded = max((s.end for s in spans if s.kind == "decode"), default=t0)
    print(f"  last decode ends at {(decoded - t0) * 1000:.0f} ms, the add at {wall * 1000:.0f} ms")
    work = [s for s in spans if s.kind in ("decode", "embed")]
    at_once: dict[int, float] = defaultdict(float)
    step, t = 0.001, t0
    while t < t1:
        at_once[sum(1 for s in work if s.start <= t < s.end)] += step
        t += step
    cells = ", ".join(f"{k}: {v * 1000:.0f}" for k, v in sorted(at_once.items()))
    print(f"  ms with k decodes/model calls running at once: {cells}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=OFFLINE_MODEL, help="name[:pretrained]")
    parser.add_argument("--images", type=int, default=32, help="12 MP JPEGs (default 32)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precompute", default="auto", help="auto, on, off")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recorder = Recorder()
    recorder.wrap(Ingester, "prepare", "decode")
    recorder.wrap(Ingester, "embed", "embed")
    recorder.wrap(Ingester, "write_embedded", "write")
    recorder.wrap(precompute.FeaturePrecompute, "_compute", "precompute")
    folder = generate_jpegs(args.images).resolve()
    files = sorted(folder.glob("*.jpg"))
    name, _, tag = args.model.partition(":")
    data_dir = Path(tempfile.mkdtemp(prefix="imgsearch-timeline-"))
    config = Config(
        model=name,
        pretrained=tag or None,
        data_dir=data_dir,
        precompute=args.precompute,
        batch_size=0,
    )
    service = Service(config)
    try:
        service.ingester.add(folder)  # warm-up: every code path once
        for r in range(1, args.rounds + 1):
            service.remove(folder)  # as bench/ingest.py does between rounds
            service.precompute.wait_idle(600)
            recorder.spans.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            service.ingester.add(folder)
            t1, c1 = time.perf_counter(), time.process_time()
            print(f"round {r} ({args.model}, load {os.getloadavg()[0]:.2f}): ", end="")
            report([s for s in recorder.spans if s.start < t1], len(files), t0, t1, c1 - c0)
    finally:
        service.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

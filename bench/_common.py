"""Shared benchmark helpers: test photos, a real daemon subprocess, HTTP timing, percentiles."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"  # gitignored: cached images, results
PY_SPY = Path(sys.executable).parent / "py-spy"  # the profiler (`pip install -e '.[bench]'`)
REPO_ROOT = Path(__file__).resolve().parent.parent
# Real photos bundled with scikit-image (no download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
_T0 = time.perf_counter()


def record(result: dict[str, Any], name: str) -> None:
    """Print a run's result (indented JSON) and append it as one line to bench/out/NAME.jsonl."""
    OUT_DIR.mkdir(exist_ok=True)
    with open(OUT_DIR / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps(result, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))


def progress(message: str) -> None:
    """One progress line on stderr, stamped with seconds since start."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def shard_vectors(folder: Path, rows: int, dim: int) -> np.ndarray:
    """The first `rows` vectors of a folder of bench/scale.py's Parquet shards, float32."""
    import pyarrow.parquet as pq

    parts, have = [], 0
    for part in sorted(folder.glob("*.parquet")):
        column = pq.read_table(part, columns=["vector"]).column(0).combine_chunks()
        parts.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, dim))
        have += len(parts[-1])
        if have >= rows:
            break
    return np.asarray(np.concatenate(parts)[:rows], np.float32)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (p50, p99, ...) plus max and count; NaN when empty."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q:g}"] = ordered[rank - 1] if ordered else math.nan
    out["max"] = ordered[-1] if ordered else math.nan
    out["count"] = len(ordered)
    return out


# -- test images -----------------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    arr = np.asarray(getattr(skdata, name)())
    return arr[..., :3] if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)


def _variant(src: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> Any:
    """A random crop of `src` at the aspect of `size`, upscaled, maybe mirrored, with grain."""
    from PIL import Image

    h, w = src.shape[:2]
    aspect = size[0] / size[1]
    scale = rng.uniform(0.8, 1.0)
    cw = min(w, h * aspect) * scale
    ch = cw / aspect
    x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    img = Image.fromarray(src).resize(size, Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Sensor-like grain gives file sizes close to a phone's 12 MP JPEG (a few MB).
    grain = rng.integers(-10, 11, size=(size[1], size[0], 1), dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def generate_jpegs(
    n: int, size: tuple[int, int] = (4000, 3000), quality: int = 90, seed: int = 0
) -> Path:
    """A folder of `n` distinct JPEGs made from real photos; cached in bench/out/ by n and size."""
    folder = OUT_DIR / f"jpeg-{size[0]}x{size[1]}-q{quality}-n{n}"
    done = folder / ".complete"
    if done.exists():
        progress(f"using {n} cached test images in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [_photo(name) for name in PHOTOS]
    for i in range(n):
        progress(f"generating test image {i + 1}/{n} ({size[0]}x{size[1]})")
        img = _variant(sources[i % len(sources)], rng, size)
        img.save(folder / f"photo_{i:04d}.jpg", quality=quality)
    done.write_text("ok\n")
    return folder


# -- HTTP --------------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET a URL and decode its JSON body; raises on non-2xx."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


# A process of its own that sleeps `sleep` s at a time until its stdin closes, then prints how
# late each wake-up came (ms percentiles, JSON): the wait for a CPU alone, no GIL shared.
WAKE_PROBE = """
import json, select, sys, time
late = []
while True:
    start = time.perf_counter()
    if select.select([sys.stdin], [], [], %(sleep)r)[0]:
        break
    late.append((time.perf_counter() - start - %(sleep)r) * 1000)
late.sort()
pick = lambda q: round(late[min(len(late) - 1, int(q / 100 * len(late)))], 3) if late else None
print(json.dumps({"p50": pick(50), "p90": pick(90), "p99": pick(99),
                  "max": round(late[-1], 3) if late else None, "count": len(late)}))
"""


class WakeProbe:
    """While open, a separate process (nice 0) wakes every `sleep` s and keeps how late each
    wake-up came (`result` after close: ms percentiles): what a request's thread waits for a
    CPU alone, beside whatever runs, with no GIL shared with the daemon."""

    def __init__(self, sleep: float = 0.005) -> None:
        self.sleep = sleep
        self.result: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> WakeProbe:
        code = WAKE_PROBE % {"sleep": self.sleep}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("stop", timeout=30)
        self.result = json.loads(out) if out.strip() else {}


@dataclass
class LatencyPoller:
    """A thread that GETs each URL in turn every `interval` s and records latencies (ms).

    `rotate`: the URLs' order turns by one every tick, so each is asked first as often as the
    others (the first request of a tick finds the daemon's event loop idle: it waits for the
    wake-up, and the GIL, that the next ones find taken care of); `by_position` then holds
    the latencies by place in the tick, whatever the URL."""

    urls: dict[str, str]
    interval: float = 0.02
    timeout: float = 10.0
    rotate: bool = False
    latencies: dict[str, list[float]] = field(default_factory=dict)
    by_position: list[list[float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
        self.latencies = {name: [] for name in self.urls}
        self.by_position = [[] for _ in self.urls]

    def _loop(self) -> None:
        order, ticks = list(self.urls.items()), 0
        while not self._stop.is_set():
            tick = time.perf_counter()
            turn = ticks % len(order) if self.rotate and order else 0
            for place, (name, url) in enumerate(order[turn:] + order[:turn]):
                start = time.perf_counter()
                try:
                    get_json(url, self.timeout)
                except (OSError, ValueError) as exc:
                    self.errors.append(f"{name}: {exc}")
                    continue
                ms = (time.perf_counter() - start) * 1000
                self.latencies[name].append(ms)
                self.by_position[place].append(ms)
            ticks += 1
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - tick)))

    def __enter__(self) -> LatencyPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the daemon ------------------------------------------------------------------------------


class Daemon:
    """A real `python -m imgsearch serve` subprocess on a free loopback port."""

    def __init__(
        self,
        flags: Sequence[str],
        data_dir: Path,
        start_timeout: float = 180.0,
        env: dict[str, str] | None = None,
        tree: Path = REPO_ROOT,
    ) -> None:
        self.extra_env = dict(env or {})  # IMGSEARCH_* settings for this daemon only
        self.tree = tree  # the source tree `python -m imgsearch` runs from (another checkout)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.flags = [*flags, "--data-dir", str(data_dir), "--port", str(self.port)]
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        """Start the daemon and wait until /health answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
        env["HF_HUB_OFFLINE"] = "1"
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "imgsearch", "serve", "--host", "127.0.0.1", *self.flags]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, cwd=self.tree, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                get_json(self.url + "/health", timeout=2.0)
                return self
            except (OSError, ValueError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon not healthy after {self.start_timeout}s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far (Linux /proc; NaN elsewhere)."""
        if self._proc is None:
            return math.nan
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return math.nan
        # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get(self, path: str, timeout: float = 3600.0) -> Any:
        return get_json(self.url + path, timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (graceful shutdown), then SIGKILL if it lingers; return the exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> Daemon:
        return self if self._proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's answer)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

"""Ingest throughput: the full /add pipeline vs the model's own forward pass vs naive loops.

For each model, on the same files (by default a mix of 64 real photos <= 1 MP and 32 phone-size
12 MP JPEGs) and in the same run:

1. forward:  images/s of `embed_prepared` alone, in the daemon's precision and batch size
             (inputs prepared beforehand; that pass also times each stage's CPU per image);
2. naive:    the same model-only loop as people write it: fp32, batch 32, contiguous layout,
             all cores (the issue #13 baseline);
3. pipeline: images/s of `GET /add?image=<folder>` on a real daemon subprocess (walk, read,
             hash, decode, preprocess, embed, SQLite, FAISS), while a thread polls /stats
             and /health every 20 ms and records their latencies;
4. seed:     images/s of a loop of full `cv2.imread` + `cv2.resize` + batch-1 forward
             (on the first --seed-images files: one image at a time, so a sample suffices).

`--batch-sweep 4 8 16 32` times the forward pass at each batch size instead (how the per-model
defaults in imgsearch/embedders/precision.py were chosen).

CPU ms per image (all threads) is printed next to each rate: it is steadier than wall time
when other processes share the machine, and cores / CPU time bounds what a pipeline can reach.

Goals: pipeline/naive >= 1.0 (bundled model) and >= 1.3 (ViT-B-32), pipeline/forward >= 0.8,
pipeline/seed >= 3, /stats p99 < 50 ms during the add.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ingest.py [--images 32 --small 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import Daemon, LatencyPoller, cpu_model, generate_jpegs, percentiles, progress

from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.embedders import Embedder, batch_size_of, load_embedder, runtime_stats

GOAL_VS_FORWARD = 0.8
GOAL_VS_NAIVE = {OFFLINE_MODEL: 1.0, "clip": 1.3}
NAIVE_BATCH = 32
GOAL_VS_SEED = 3.0
GOAL_STATS_P99_MS = 50.0
DEFAULT_MODELS = (OFFLINE_MODEL, "ViT-B-32:none")
KINDS = ("forward", "naive", "pipeline", "seed")
STAGES = ("read", "sha256", "decode", "prepare", "forward", "store")


@dataclass(frozen=True)
class ModelSpec:
    """A model as `name[:pretrained]`; the pretrained tag defaults to none (random weights)."""

    name: str
    pretrained: str | None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, _, tag = text.partition(":")
        return cls(name, None if tag.lower() in {"", "none"} else tag)

    @property
    def slug(self) -> str:
        return self.label.replace("/", "-")

    @property
    def label(self) -> str:
        if self.name == OFFLINE_MODEL:
            return self.name
        return f"{self.name}/{self.pretrained or 'random'}"

    def config(self, args: argparse.Namespace, data_dir: Path) -> Config:
        return Config(
            model=self.name,
            pretrained=self.pretrained,
            device=args.device,
            batch_size=args.batch_size,
            precision=args.precision,
            data_dir=data_dir,
            # In-process forward and seed loops get every core (the model at its best, and
            # torch's default, as the seed had); the daemon runs with its own defaults.
            threads=args.threads or os.cpu_count() or 1,
        )

    def flags(self, args: argparse.Namespace) -> list[str]:
        return [
            *("--model", self.name, "--pretrained", self.pretrained or "none"),
            *("--device", args.device, "--batch-size", str(args.batch_size)),
            *("--precision", args.precision, "--precompute", args.precompute),
        ]


# -- 1. forward pass (and per-stage costs) ---------------------------------------------------


def prepare_all(
    embedder: Embedder, files: Sequence[Path], config: Config
) -> tuple[list[Any], dict[str, float]]:
    """Model inputs for every file, made as the ingester makes them; CPU ms per image by stage.

    CPU time of this thread, not wall time, so that other processes on the machine do not
    inflate the stages (torch's helper threads, if a small op fans out, are not counted).
    """
    from imgsearch.images import decode, read_file

    def load(path: Path) -> Any:
        data, _ = read_file(path, config.max_upload_bytes)
        return decode(data, min_side=embedder.input_size, max_pixels=config.max_image_pixels)

    embedder.prepare(load(files[0]).image)  # warm-up, not timed
    clock = time.thread_time
    totals = dict.fromkeys(("read", "sha256", "decode", "prepare"), 0.0)
    tensors = []
    for path in files:
        t0 = clock()
        data, _ = read_file(path, config.max_upload_bytes)
        t1 = clock()
        hashlib.sha256(data).hexdigest()
        t2 = clock()
        decoded = decode(data, min_side=embedder.input_size, max_pixels=config.max_image_pixels)
        t3 = clock()
        tensors.append(embedder.prepare(decoded.image))
        t4 = clock()
        for stage, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[stage] += seconds
    return tensors, {k: v * 1000 / len(files) for k, v in totals.items()}


def time_forward(
    embedder: Embedder, tensors: Sequence[Any], batch_size: int
) -> tuple[dict[str, float], np.ndarray]:
    """images/s and CPU ms/image of embed_prepared on all inputs in daemon-sized batches."""
    embedder.embed_prepared(tensors[:2])  # warm-up, not timed
    start, cpu = time.perf_counter(), time.process_time()
    vectors = [
        embedder.embed_prepared(tensors[i : i + batch_size])
        for i in range(0, len(tensors), batch_size)
    ]
    return _rate(len(tensors), start, cpu), np.concatenate(vectors)


def _rate(n: int, start: float, cpu: float) -> dict[str, float]:
    """images/s since `start` and this process's CPU ms per image since `cpu`."""
    return {
        "images_per_s": n / (time.perf_counter() - start),
        "cpu_ms_per_image": (time.process_time() - cpu) * 1000 / n,
    }


def time_store(
    files: Sequence[Path], vectors: np.ndarray, embedder: Embedder, batch_size: int, folder: Path
) -> float:
    """CPU ms per image of Catalog.put (SQLite transaction + FAISS add), daemon-sized batches."""
    from imgsearch.catalog import Catalog
    from imgsearch.store import FileFacts, NewImage

    catalog = Catalog(folder, embedder.model_id, embedder.dim)
    items = [
        NewImage(FileFacts(str(p), 1, 1, f"{i:064x}", 4000, 3000), vectors[i])
        for i, p in enumerate(files)
    ]
    try:
        start = time.process_time()
        for i in range(0, len(items), batch_size):
            catalog.put(items[i : i + batch_size])
        return (time.process_time() - start) * 1000 / len(items)
    finally:
        catalog.close()


# -- 2. the full /add pipeline ---------------------------------------------------------------


def time_add(daemon: Daemon, folder: Path, n: int, poll_interval: float) -> dict[str, Any]:
    """images/s of one GET /add of `folder` (removed first), with /stats, /health latencies."""
    quoted = urllib.parse.quote(str(folder))
    daemon.get("/remove?image=" + quoted)
    urls = {name: f"{daemon.url}/{name}" for name in ("stats", "health")}
    with LatencyPoller(urls, interval=poll_interval) as poller:
        start, cpu = time.perf_counter(), daemon.cpu_seconds()
        report = daemon.get("/add?image=" + quoted)
        elapsed, cpu = time.perf_counter() - start, daemon.cpu_seconds() - cpu
    if report["added"] != n or report["failed"]:
        progress(f"WARNING: unexpected add report {report}")
    return {
        "images_per_s": n / elapsed,
        "cpu_ms_per_image": cpu * 1000 / n,  # the daemon's, all threads
        "report": {k: report[k] for k in ("added", "updated", "skipped", "failed")},
        "latencies": poller.latencies,
        "poll_errors": poller.errors[:5],
    }


def start_daemon(spec: ModelSpec, args: argparse.Namespace, folder: Path, workdir: Path) -> Daemon:
    """A fresh daemon for `spec`, warmed up by adding one image from another folder."""
    warmup = workdir / "warmup"
    if not warmup.exists():
        warmup.mkdir()
        shutil.copy(next(folder.glob("*.jpg")), warmup / "warmup.jpg")
    daemon = Daemon(spec.flags(args), workdir / f"data-{spec.slug}").start()
    progress(f"{spec.label}: daemon up on {daemon.url}; warm-up add of one image")
    try:
        daemon.get("/add?image=" + urllib.parse.quote(str(warmup)))
    except BaseException:
        daemon.stop()
        raise
    return daemon


# -- 3. the seed-style loop ------------------------------------------------------------------


def time_seed(embedder: Embedder, files: Sequence[Path]) -> dict[str, float]:
    """images/s (and CPU) of full cv2.imread + cv2.resize to the model input + batch-1 forward."""
    import cv2

    side = embedder.input_size
    decode_cpu = 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for path in files:
        t0 = time.thread_time()
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        decode_cpu += time.thread_time() - t0
        rgb = cv2.cvtColor(cv2.resize(bgr, (side, side)), cv2.COLOR_BGR2RGB)
        embedder.embed_prepared([rgb])  # uint8 HxWx3, normalised on the batch
    return {**_rate(len(files), start, cpu), "imread_cpu_ms": decode_cpu * 1000 / len(files)}


# -- one model, all three ------------------------------------------------------------------


def naive_embedder(config: Config) -> Embedder:
    """The model as a naive loop runs it: as published (the bundled CNN's batch norms not
    folded into its convolutions), fp32, contiguous (no channels_last)."""
    import torch

    from imgsearch.embedders.base import TorchEmbedder
    from imgsearch.embedders.cnn import EfficientNetLite0, load_model

    embedder = load_embedder(dataclasses.replace(config, precision="fp32", batch_size=NAIVE_BATCH))
    if isinstance(embedder, EfficientNetLite0):
        embedder.use(load_model(), "fp32", embedder.runtime)
    if isinstance(embedder, TorchEmbedder) and embedder.runtime.channels_last:
        plain = embedder.module.to(memory_format=torch.contiguous_format)
        runtime = dataclasses.replace(embedder.runtime, channels_last=False)
        embedder.use(plain, "fp32", runtime)
    return embedder


def measure_model(
    spec: ModelSpec, args: argparse.Namespace, folder: Path, workdir: Path
) -> dict[str, Any]:
    """Stage costs once, then `--repeat` rounds of forward, naive, pipeline, seed; best of each."""
    files = sorted(folder.glob("*.jpg"))
    config = spec.config(args, workdir / "unused")
    progress(f"{spec.label}: loading the model in-process (fast, then naive)")
    embedder = load_embedder(config)
    batch = batch_size_of(embedder)
    naive = naive_embedder(config)
    progress(f"{spec.label}: preparing {len(files)} images (untimed for forward)")
    tensors, stages = prepare_all(embedder, files, config)
    if args.batch_sweep:
        return sweep(spec, embedder, naive, tensors, args.batch_sweep)
    rounds: list[dict[str, Any]] = []
    with start_daemon(spec, args, folder, workdir) as daemon:
        for r in range(1, args.repeat + 1):
            progress(f"{spec.label}: round {r}/{args.repeat}: forward, batch {batch}")
            forward, vectors = time_forward(embedder, tensors, batch)
            progress(f"{spec.label}: round {r}: naive fp32 loop, batch {NAIVE_BATCH}")
            naive_rate, _ = time_forward(naive, tensors, NAIVE_BATCH)
            progress(f"{spec.label}: round {r}: GET /add of {len(files)} images")
            pipeline = time_add(daemon, folder, len(files), args.poll_interval)
            progress(f"{spec.label}: round {r}: seed-style loop on {args.seed_images} images")
            seed = time_seed(embedder, files[: args.seed_images])
            rounds.append({"forward": forward, "naive": naive_rate, "pipeline": pipeline})
            rounds[-1]["seed"] = seed
        daemon_stats = daemon.get("/stats")
    store_dir = workdir / f"store-{spec.slug}"
    store_dir.mkdir()
    stages["store"] = time_store(files, vectors, embedder, batch, store_dir)
    out = summarise(spec, embedder, rounds, stages)
    out["embedding"] = daemon_stats.get("embedding", {})
    return out


def sweep(
    spec: ModelSpec, fast: Embedder, naive: Embedder, tensors: Sequence[Any], sizes: Sequence[int]
) -> dict[str, Any]:
    """Forward images/s at each batch size, in the chosen precision and in the naive fp32."""
    rows: dict[str, dict[int, str]] = {"chosen": {}, "naive fp32": {}}
    for size in sizes:
        for label, embedder in (("chosen", fast), ("naive fp32", naive)):
            rate, _ = time_forward(embedder, tensors, size)
            cell = f"{rate['images_per_s']:.1f} ({rate['cpu_ms_per_image']:.0f})"
            rows[label][size] = cell
            progress(f"{spec.label}: {label} batch {size}: {cell} img/s (CPU ms)")
    return {"model": spec.label, "sweep": rows, "embedding": runtime_stats(fast)}


def summarise(
    spec: ModelSpec, embedder: Embedder, rounds: list[dict[str, Any]], stages: dict[str, float]
) -> dict[str, Any]:
    """Best images/s (and least CPU) of each measurement over the rounds, and their ratios."""
    best: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        best[kind] = {
            "images_per_s": max(r[kind]["images_per_s"] for r in rounds),
            "cpu_ms_per_image": min(r[kind]["cpu_ms_per_image"] for r in rounds),
        }
    stages["forward"] = best["forward"]["cpu_ms_per_image"]
    stages["total"] = sum(stages[k] for k in STAGES)
    stages["seed_imread"] = min(r["seed"]["imread_cpu_ms"] for r in rounds)
    latencies = {
        name: percentiles([ms for r in rounds for ms in r["pipeline"]["latencies"][name]])
        for name in ("stats", "health")
    }
    for r in rounds:  # keep summaries, not every sample, in the JSON
        r["pipeline"]["latencies"] = {
            k: percentiles(v) for k, v in r["pipeline"]["latencies"].items()
        }
    pipe = best["pipeline"]["images_per_s"]
    return {
        "model": spec.label,
        "model_id": embedder.model_id,
        **best,
        "pipeline_vs_forward": pipe / best["forward"]["images_per_s"],
        "pipeline_vs_naive": pipe / best["naive"]["images_per_s"],
        "pipeline_vs_seed": pipe / best["seed"]["images_per_s"],
        "stats_ms": latencies["stats"],
        "health_ms": latencies["health"],
        "stage_ms_per_image": stages,
        "rounds": rounds,
    }


# -- output --------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_results(results: list[dict[str, Any]], n: str, load: Sequence[float]) -> None:
    print(f"\nIngest of {n}: images/s (CPU ms per image), ratios from this run")
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_model()}, {cores} cores")
    print(f"(1-minute load average {load[0]:.2f} at start, {load[1]:.2f} at end)")
    if max(load) > 0.5 * cores:
        print("WARNING: other processes were busy; wall-clock figures and ratios are unreliable")
    print()
    head = ("model", *KINDS, "pipe/fwd", "pipe/naive", "pipe/seed")
    print("{:<20} {:>14} {:>14} {:>14} {:>14} {:>8} {:>10} {:>9}".format(*head))
    for r in results:
        cells = [f"{r[k]['images_per_s']:.1f} ({r[k]['cpu_ms_per_image']:.0f})" for k in KINDS]
        print(
            f"{r['model']:<20} " + " ".join(f"{c:>14}" for c in cells) + " "
            f"{r['pipeline_vs_forward']:>8.2f} {r['pipeline_vs_naive']:>10.2f} "
            f"{r['pipeline_vs_seed']:>8.1f}x"
        )
    for r in results:
        print(f"  {r['model']}: {json.dumps(r.get('embedding', {}))}")
    print("\nLatency while /add runs, ms: p50 / p99 / max (samples)\n")
    for r in results:
        line = [f"{r['model']:<20}"]
        for name in ("stats", "health"):
            q = r[f"{name}_ms"]
            line.append(f"/{name} {q['p50']:.1f} / {q['p99']:.1f} / {q['max']:.1f} ({q['count']})")
        print("   ".join(line))
    print(f"\nCPU ms per image by stage, and the pipeline's CPU-bound ceiling on {cores} cores\n")
    cols = (*STAGES, "total")
    print("{:<20}".format("model") + "".join(f"{c:>9}" for c in cols) + "  ceiling img/s")
    for r in results:
        ms = r["stage_ms_per_image"]
        ceiling = cores * 1000 / ms["total"]
        print(f"{r['model']:<20}" + "".join(f"{ms[c]:>9.1f}" for c in cols) + f"  {ceiling:.1f}")
    imread = ", ".join(
        f"{r['model']} {r['stage_ms_per_image']['seed_imread']:.0f}" for r in results
    )
    print(f"(the seed's full-size cv2.imread, CPU ms per image: {imread})")
    print("\nGoals")
    for r in results:
        goal = GOAL_VS_NAIVE.get(r["model"], GOAL_VS_NAIVE["clip"])
        naive = r["pipeline_vs_naive"]
        print(f"  {r['model']}: pipeline/naive {naive:.2f} >= {goal} {_mark(naive >= goal)}")
        fwd, seed, p99 = r["pipeline_vs_forward"], r["pipeline_vs_seed"], r["stats_ms"]["p99"]
        print(
            f"  {r['model']}: pipeline/forward {fwd:.3f} >= {GOAL_VS_FORWARD} "
            f"{_mark(fwd >= GOAL_VS_FORWARD)}; pipeline/seed {seed:.1f} >= {GOAL_VS_SEED:g} "
            f"{_mark(seed >= GOAL_VS_SEED)}; /stats p99 {p99:.1f} ms < {GOAL_STATS_P99_MS:g} "
            f"{_mark(p99 < GOAL_STATS_P99_MS)}"
        )


def print_sweep(results: list[dict[str, Any]], load: Sequence[float]) -> None:
    print(f"\nForward images/s (CPU ms/image) by batch size; CPU: {cpu_model()}")
    print(f"{os.cpu_count()} cores, {torch_threads()} torch threads")
    print(f"(1-minute load average {load[0]:.2f} at start, {load[1]:.2f} at end)\n")
    for r in results:
        print(f"{r['model']}: {json.dumps(r['embedding'])}")
        for label, rates in r["sweep"].items():
            cells = "  ".join(f"b{size}: {cell}" for size, cell in rates.items())
            print(f"  {label:<12} {cells}")


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def mixed_folder(big: int, small: int) -> Path:
    """`big` 12 MP phone-size JPEGs and `small` real photos <= 1 MP, linked into one folder."""
    parts = [generate_jpegs(big)] if big else []
    if small:
        parts.append(generate_jpegs(small, size=(1152, 864), seed=1))
    if len(parts) == 1:
        return parts[0]
    folder = parts[0].parent / f"mixed-{big}-{small}"
    if not (folder / ".complete").exists():
        folder.mkdir(exist_ok=True)
        for part in parts:
            for f in part.glob("*.jpg"):
                target = folder / f"{part.name}-{f.name}"
                if not target.exists():
                    os.link(f, target)
        (folder / ".complete").write_text("ok\n")
    return folder


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--images", type=int, default=32, help="how many 12 MP JPEGs (default 32)")
    add("--small", type=int, default=64, help="how many photos <= 1 MP besides (default 64)")
    add("--precision", default="auto", help="auto, fp32, bf16, fp16 (default auto)")
    add("--precompute", default="auto", help="the daemon's --precompute: auto, on, off (auto)")
    add("--batch-sweep", type=int, nargs="*", help="only time forward at these batch sizes")
    add("--threads", type=int, help="torch threads in-process (default: all cores)")
    add("--models", nargs="+", default=list(DEFAULT_MODELS), help="name[:pretrained] each")
    add("--seed-images", type=int, default=16, help="images in the seed-style loop (16)")
    add("--batch-size", type=int, default=Config().batch_size, help="model batch size")
    add("--device", default="auto", help="auto, cpu, cuda (default auto)")
    add("--repeat", type=int, default=3, help="rounds per model; best of each (default 3)")
    add("--poll-interval", type=float, default=0.02, help="seconds between /stats polls")
    add("--json", type=Path, help="write the results here as JSON")
    add("--keep", action="store_true", help="keep the daemons' data dirs and logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = mixed_folder(args.images, args.small)
    workdir = Path(tempfile.mkdtemp(prefix="imgsearch-bench-"))
    load = [os.getloadavg()[0]]
    if load[0] > 0.25 * (os.cpu_count() or 1):
        progress(f"WARNING: load average {load[0]:.2f}: other work will skew the figures")
    try:
        results = [measure_model(ModelSpec.parse(m), args, folder, workdir) for m in args.models]
    finally:
        if args.keep:
            progress(f"kept data dirs and daemon logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    load.append(os.getloadavg()[0])
    if args.batch_sweep:
        print_sweep(results, load)
    else:
        print_results(results, f"{args.images} 12 MP JPEGs + {args.small} photos <= 1 MP", load)
    if args.json:
        doc = {"images": args.images, "load_average": load, "machine": machine()}
        doc["results"] = results
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

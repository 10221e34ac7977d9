"""Running a plan on Ray Data: one model replica per actor, a shard per call, skip finished ones.

The driver plans and watches; actors (`ShardWorker`) load the model once and run `embed_shard`
on each shard they are handed. Ray Data schedules the actors (CPUs or GPUs each), retries
shards whose actor died, and streams each shard's result back for the progress bar.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..config import Config
from ..embedders import Embedder, batch_size_of, load_embedder
from ..errors import ImgSearchError
from ..images import enable_heif, image_extensions
from .plan import LISTING, Plan, check_sources, load_or_make, shard_files
from .shard import FAILURES_DIR, Limits, embed_shard, is_done

log = logging.getLogger(__name__)

INSTALL_HINT = "imgsearch embed needs Ray Data: pip install 'imgsearch[cluster]'"
SHARD_RETRIES = 2  # a shard's worker restarted and its task retried this often, then left


class ClusterError(ImgSearchError):
    """Ray missing, or a cluster that cannot be reached."""


@dataclass(frozen=True)
class EmbedOptions:
    """What `imgsearch embed` was asked to do."""

    sources: list[str]
    out: Path
    model: Config  # model, pretrained, checkpoint, model_config, device, batch_size, limits
    ray_address: str | None = None  # None: a local Ray on this machine's cores
    workers: int | None = None  # None: as many as the cluster's CPUs (GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shard_size: int = 1000


@dataclass
class Summary:
    out: str = ""
    images: int = 0
    failed: int = 0
    shards: int = 0
    skipped_shards: int = 0
    unfinished: list[int] = field(default_factory=list)  # shards whose workers kept failing
    unlisted: int = 0  # files the plan found and could not take (failures/plan.parquet)
    seconds: float = 0.0
    per_worker: dict[str, list[float]] = field(default_factory=dict)  # name -> [images, seconds]

    def as_json(self) -> dict[str, Any]:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        workers = {
            name: round(images / seconds, 2) if seconds > 0 else 0.0
            for name, (images, seconds) in sorted(self.per_worker.items())
        }
        return {
            "out": self.out,
            "failures": str(Path(self.out) / FAILURES_DIR),
            "images": self.images,
            "failed": self.failed,
            "shards": self.shards,
            "skipped_shards": self.skipped_shards,
            "unfinished_shards": self.unfinished,
            "unlisted": self.unlisted,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(rate, 2),
            "images_per_s_per_worker": workers,
        }


def worker_config(config: Config, cpus: float) -> Config:
    """The daemon's model settings, with torch threads to match the worker's CPUs."""
    return Config(
        model=config.model,
        pretrained=config.pretrained,
        checkpoint=config.checkpoint,
        model_config=config.model_config,
        device=config.device,
        precision=config.precision,
        batch_size=config.batch_size,
        max_upload_mb=config.max_upload_mb,
        max_image_pixels=config.max_image_pixels,
        threads=max(1, int(cpus)),
        workers=max(1, int(cpus)),
    )


def limits_of(config: Config, embedder: Embedder) -> Limits:
    """File limits, and the batch size the daemon would use (0: the embedder's measured one)."""
    batch = config.batch_size or batch_size_of(embedder)
    return Limits(config.max_upload_bytes, config.max_image_pixels, batch, config.workers)


class ShardWorker:
    """A Ray actor: the model loaded once; each call embeds whole shards into `out`."""

    def __init__(self, config: Config, out: str, embedder: Embedder | None = None) -> None:
        enable_heif()
        self.embedder = embedder if embedder is not None else load_embedder(config)
        self.limits = limits_of(config, self.embedder)
        self.out = Path(out)
        self.listing = pq.ParquetFile(self.out / LISTING)  # the footer is parsed once
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = defaultdict(list)
        for shard in batch["shard"]:
            names = shard_files(self.out, int(shard), self.listing)
            result = embed_shard(int(shard), names, self.embedder, self.limits, self.out)
            rows["shard"].append(result.shard)
            rows["images"].append(result.images)
            rows["failed"].append(result.failed)
            rows["seconds"].append(result.seconds)
            rows["worker"].append(self.name)
        return dict(rows)


def plan_run(options: EmbedOptions, embedder: Embedder) -> Plan:
    """Make or reload the plan in --out (refusing another model or other sources)."""
    options.out.mkdir(parents=True, exist_ok=True)
    extensions = image_extensions(enable_heif())
    return load_or_make(
        options.out,
        options.sources,
        embedder.model_id,
        embedder.dim,
        options.shard_size,
        extensions,
    )


def connect(address: str | None) -> bool:
    """Join the cluster (or start a local Ray); True when this call started Ray."""
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    if ray.is_initialized():
        return False
    if address is not None:
        probe(address)
    try:
        quiet = logging.WARNING
        if address is None:
            ray.init(
                address="local", include_dashboard=False, log_to_driver=False, logging_level=quiet
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address if address is not None else "a local Ray"
        raise ClusterError(f"cannot reach the Ray cluster at {where}: {exc}") from None
    return True


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody answers on (ray.init would retry for minutes)."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address or address == "auto":  # Ray finds a cluster started on this machine
            return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray wants HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def default_workers(options: EmbedOptions) -> int:
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    if options.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // options.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(options.cpus_per_worker, 0.01)))


def run_plan(options: EmbedOptions, plan: Plan, *, show_progress: bool = True) -> Summary:
    """Embed every shard of the plan not yet in --out on Ray Data; the run's summary."""
    import ray.data
    from tqdm import tqdm

    summary = Summary(str(options.out), shards=plan.manifest.shards)
    summary.unlisted = plan.manifest.unlisted
    todo = [n for n in range(plan.manifest.shards) if not is_done(options.out, n)]
    summary.skipped_shards = plan.manifest.shards - len(todo)
    if not todo:
        return summary
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # A shard whose worker keeps dying (a decoder's crash, the OOM killer) is left for the
    # summary's `unfinished_shards` and the next run: Ray Data retried it for good otherwise.
    ctx.max_errored_blocks = -1
    workers = min(options.workers or default_workers(options), len(todo))  # (no idle actors)
    items = [{"shard": n} for n in todo]  # workers read their files from the listing
    config = worker_config(options.model, options.cpus_per_worker)
    with warnings.catch_warnings():
        # Ray Data (2.60) takes an actor's restarts only in its deprecated **ray_remote_args,
        # with no named parameter yet; its default, -1, retries a crashing shard for good.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker,
            fn_constructor_args=(config, str(options.out)),
            batch_size=1,
            # One shard at a time on each worker: a worker that dies fails only its own shard,
            # not the next one queued behind it (failed with it on every retry otherwise).
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
            max_restarts=SHARD_RETRIES,
            max_task_retries=SHARD_RETRIES,
        )
    total = sum(plan.size(n) for n in todo)
    started = time.monotonic()
    hide = None if show_progress else True
    log.info("embedding %d files in %d shards on %d workers", total, len(todo), workers)
    with tqdm(total=total, unit="img", desc="embedding", disable=hide, dynamic_ncols=True) as bar:
        for row in ds.iter_rows():
            summary.images += int(row["images"])
            summary.failed += int(row["failed"])
            worker = summary.per_worker.setdefault(str(row["worker"]), [0.0, 0.0])
            worker[0] += int(row["images"])
            worker[1] += float(row["seconds"])
            bar.update(int(row["images"]) + int(row["failed"]))
            bar.set_postfix_str(f"{summary.failed} failed")
    summary.seconds = time.monotonic() - started
    summary.unfinished = [n for n in todo if not is_done(options.out, n)]
    if summary.unfinished:
        log.warning("shards not written (their workers failed): %s", summary.unfinished)
    return summary


def embed(options: EmbedOptions, *, show_progress: bool = True) -> Summary:
    """Load the model (to name it), plan, connect to Ray and run what is left of the plan."""
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    check_sources(options.sources)  # the quick checks first: loading a model takes a while
    if options.ray_address is not None and not ray.is_initialized():
        probe(options.ray_address)
    # Loaded here only to name the model (its id and dimension): on this machine's CPU
    # whatever the workers use (a head node without the workers' GPU ran --device cuda).
    naming = replace(options.model, device="cpu", precision="fp32")
    embedder = load_embedder(worker_config(naming, 1))
    plan = plan_run(options, embedder)
    del embedder
    started_ray = connect(options.ray_address)
    try:
        return run_plan(options, plan, show_progress=show_progress)
    finally:
        if started_ray:
            ray.shutdown()

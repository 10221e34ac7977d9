"""Running a plan on Ray Data: one model replica per actor, a shard per call, skip finished ones.

The driver plans and watches; actors (`ShardWorker`) load the model once and run `embed_shard`
on each shard they are handed. Ray Data schedules the actors (CPUs or GPUs each), retries
shards whose actor died, and streams each shard's result back for the progress bar. A shard
whose worker raised comes back as a result too, saying why in one line; an error of --out
itself (no room, no permission) stops the run, as every shard after it would fail the same way.
"""

from __future__ import annotations

import errno
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
from ..errors import ImgSearchError, disk_full
from ..files import TEMP_PREFIX
from ..images import enable_heif, image_extensions
from .plan import LISTING, Plan, PlanError, check_sources, load_or_make, shard_files
from .session import INSTALL_HINT as INSTALL_HINT
from .session import ClusterError as ClusterError
from .session import check_fits, connect, default_workers, probe, stdout_to_stderr
from .shard import FAILURES_DIR, Limits, ShardResult, embed_shard, is_done

log = logging.getLogger(__name__)

SHARD_RETRIES = 2  # a shard's worker restarted and its task retried this often, then left
ERRORS_SHOWN = 5  # distinct reasons a shard was not written, logged; the rest only counted
# Errors of --out's filesystem, not of one shard: every later shard would embed its files and
# then fail the same way, so the first one stops the run.
STOPPING = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
    errno.ENOTDIR,
})  # fmt: skip


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
    errors: dict[int, str] = field(default_factory=dict)  # shard -> why its worker raised
    stopped: str | None = None  # why the run stopped before its last shard (STOPPING)
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
            error, stop = "", False
            try:
                names = shard_files(self.out, int(shard), self.listing)
                result = embed_shard(int(shard), names, self.embedder, self.limits, self.out)
            except Exception as exc:  # the shard is left for the next run, and the driver
                # says why in one line: raised out of here, Ray Data logged a traceback per
                # shard, and the run ended as if it had succeeded.
                result, error = ShardResult(int(shard), 0, 0, 0.0), shard_error(exc)
                stop = isinstance(exc, OSError) and exc.errno in STOPPING
            rows["shard"].append(result.shard)
            rows["images"].append(result.images)
            rows["failed"].append(result.failed)
            rows["seconds"].append(result.seconds)
            rows["worker"].append(self.name)
            rows["error"].append(error)
            rows["stop"].append(stop)
        return dict(rows)


def shard_error(exc: Exception) -> str:
    """Why a shard was not written, in one line (a temp file named by its folder, so that the
    same cause reads the same for every shard)."""
    if isinstance(exc, ImgSearchError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        name = str(exc.filename or "")
        if os.path.basename(name).startswith(TEMP_PREFIX):
            name = os.path.dirname(name)
        return f"{exc.strerror}: {name}" if name else exc.strerror
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_options(options: EmbedOptions) -> None:
    """Numbers a run cannot have, and an --out that is a file: one PlanError each (Ray Data
    raised deep inside for `workers=-1`, mkdir a FileExistsError for the file)."""
    if options.workers is not None and options.workers < 1:
        raise PlanError(f"--workers must be at least 1, got {options.workers}")
    if not options.cpus_per_worker > 0:
        raise PlanError(f"--cpus-per-worker must be more than 0, got {options.cpus_per_worker}")
    if not options.gpus_per_worker >= 0:
        raise PlanError(f"--gpus-per-worker must be 0 or more, got {options.gpus_per_worker}")
    if options.shard_size < 1:
        raise PlanError(f"--shard-size must be at least 1, got {options.shard_size}")
    if options.out.exists() and not options.out.is_dir():
        raise PlanError(f"--out {options.out} is a file, not a folder")


def plan_run(options: EmbedOptions, embedder: Embedder) -> Plan:
    """Make or reload the plan in --out (refusing another model or other sources)."""
    extensions = image_extensions(enable_heif())
    try:
        options.out.mkdir(parents=True, exist_ok=True)
        return load_or_make(
            options.out,
            options.sources,
            embedder.model_id,
            embedder.dim,
            options.shard_size,
            extensions,
        )
    except OSError as exc:  # a full disk is the CLI's own line (disk_full)
        if disk_full(exc) is not None:
            raise
        raise PlanError(f"cannot plan the run in --out {options.out}: {shard_error(exc)}") from None


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
    # Before any actor is asked for: Ray waits for good for one no node can hold.
    check_fits(options.cpus_per_worker, options.gpus_per_worker)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # A shard whose worker keeps dying (a decoder's crash, the OOM killer) is left for the
    # summary's `unfinished_shards` and the next run: Ray Data retried it for good otherwise.
    # Only a dead worker reaches Ray Data so: a shard that raises is a row (ShardWorker).
    ctx.max_errored_blocks = -1
    sized = options.workers or default_workers(options.cpus_per_worker, options.gpus_per_worker)
    workers = min(sized, len(todo))  # (no idle actors)
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
            if row["error"]:
                if not took_error(summary, int(row["shard"]), str(row["error"]), row["stop"]):
                    break
                continue
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
        log.warning("shards not written: %s", summary.unfinished)
    return summary


def took_error(summary: Summary, shard: int, error: str, stop: bool) -> bool:
    """Record why a shard was not written, logged once per reason; False where the run
    stops (an error of --out itself, STOPPING)."""
    if error not in summary.errors.values() and len(set(summary.errors.values())) < ERRORS_SHOWN:
        log.error("shard %d not written: %s", shard, error)
    summary.errors[shard] = error
    if stop:
        summary.stopped = f"shard {shard}: {error}"
        log.error("embed stopped: every shard would fail the same way (%s)", error)
    return not stop


def embed(options: EmbedOptions, *, show_progress: bool = True) -> Summary:
    """Load the model (to name it), plan, connect to Ray and run what is left of the plan."""
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    check_options(options)  # the quick checks first: loading a model takes a while
    check_sources(options.sources)
    if options.ray_address is not None and not ray.is_initialized():
        probe(options.ray_address)
    # Loaded here only to name the model (its id and dimension): on this machine's CPU
    # whatever the workers use (a head node without the workers' GPU ran --device cuda).
    naming = replace(options.model, device="cpu", precision="fp32")
    embedder = load_embedder(worker_config(naming, 1))
    plan = plan_run(options, embedder)
    del embedder
    with stdout_to_stderr():  # what Ray prints (a dead worker's lines) is not the summary
        started_ray = connect(options.ray_address)
        try:
            return run_plan(options, plan, show_progress=show_progress)
        finally:
            if started_ray:
                ray.shutdown()

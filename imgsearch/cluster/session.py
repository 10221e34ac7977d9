"""Ray for a run: joining the cluster (or starting a local one), checking that it can hold a
worker, and keeping what Ray prints off standard output, which holds the run's summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import ImgSearchError

INSTALL_HINT = "imgsearch embed needs Ray Data: pip install 'imgsearch[cluster]'"


class ClusterError(ImgSearchError):
    """Ray missing, or a cluster that cannot be reached."""


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


def check_fits(cpus: float, gpus: float) -> None:
    """A ClusterError, naming what the cluster has, where no node can hold one worker: Ray
    waited for such an actor for good (`--gpus-per-worker 1` on a cluster without GPUs)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    has = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in has):
        return
    total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    most_cpus = max((r.get("CPU", 0) for r in has), default=0)
    most_gpus = max((r.get("GPU", 0) for r in has), default=0)
    raise ClusterError(
        f"no node of the cluster can hold a worker of {cpus:g} CPUs and {gpus:g} GPUs "
        f"(--cpus-per-worker, --gpus-per-worker): it has {total.get('CPU', 0):g} CPUs and "
        f"{total.get('GPU', 0):g} GPUs in all, at most {most_cpus:g} CPUs and {most_gpus:g} "
        "GPUs on one node"
    )


def default_workers(cpus: float, gpus: float) -> int:
    """As many workers of `cpus` CPUs (`gpus` GPUs, where more than 0) as the cluster holds."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, int(resources.get("CPU", 1) // max(cpus, 0.01)))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Standard output goes to standard error while Ray runs, restored after: Ray's driver
    prints its workers' deaths (`(raylet) A worker died ...`) to stdout, and `--json` must
    print JSON there. Both the file descriptor (what Ray's processes, started here, inherit,
    and C++ writes to) and `sys.stdout` (what Ray's Python threads look up to print)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 here: nothing to keep apart
        saved = -1
    if saved >= 0:
        try:
            os.dup2(2, 1)
        except OSError:  # no fd 2 either
            os.close(saved)
            saved = -1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved >= 0:
            os.dup2(saved, 1)
            os.close(saved)

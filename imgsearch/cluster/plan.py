"""The plan of an embedding run: the listing cut into fixed shards, kept in --out.

`manifest.json` names the model, its dimension, the sources and the shard size;
`plan/listing.parquet` holds (shard, path) for every file, one row group per shard, so a worker
reads its shard's files straight from it and the driver never holds the listing after planning.
Both are written once, atomically, before any shard runs; a rerun reads the manifest instead of
listing again, so shard N always holds the same files. A rerun with another model or other
sources is refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..bulk.format import write_shard
from ..errors import ImgSearchError
from ..files import write_atomic
from ..ingest import AddReport, nameable, walk
from .shard import local_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LISTING = Path("plan") / "listing.parquet"
FAILURES = Path("failures") / "plan.parquet"  # beside the shards' (shard.FAILURES_DIR)
FORMAT = 1


class PlanError(ImgSearchError):
    """A run that cannot start: missing sources, another model in --out, no files."""


@dataclass(frozen=True)
class Manifest:
    format: int
    model: str
    dim: int
    sources: list[str]
    shard_size: int
    shards: int
    files: int
    unlisted: int = 0  # files found while listing that no shard holds (failures/plan.parquet)


@dataclass(frozen=True)
class Plan:
    manifest: Manifest

    def size(self, shard: int) -> int:
        """How many files shard `shard` holds."""
        m = self.manifest
        return max(0, min(m.shard_size, m.files - shard * m.shard_size))


def shard_files(out: Path, shard: int, listing: pq.ParquetFile | None = None) -> list[str]:
    """The files of one shard, read from its row group of the listing."""
    group = (listing or pq.ParquetFile(out / LISTING)).read_row_group(shard)
    numbers = {int(n) for n in group.column("shard").to_pylist() if n is not None}
    if numbers != {shard}:
        raise PlanError(f"{out / LISTING}: row group {shard} holds shards {sorted(numbers)}")
    return [str(p) for p in group.column("path").to_pylist()]


def check_sources(sources: list[str]) -> None:
    """Every local source exists (`file://` ones too; other URLs are checked when listed)."""
    for src in sources:
        local = _local(src)
        if local is not None and not Path(local).expanduser().exists():
            raise PlanError(f"no such file or directory: {src}")


def _local(src: str) -> str | None:
    """A source of this machine's filesystem as a path (a `file://` URL's), else None."""
    return src if "://" not in src else local_path(src)


def list_sources(
    sources: list[str], extensions: frozenset[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Every image file under the sources (folders or files, local or fsspec URLs), sorted;
    and the files found that cannot be embedded, with why (a broken link, a name that is not
    UTF-8, a folder that cannot be listed), which no shard records otherwise."""
    found: list[str] = []
    report = AddReport()
    for src in sources:
        local = _local(src)  # a file:// URL is listed as its folder is: paths, not URLs
        if local is None:
            found += _list_url(src, extensions)
            continue
        root = Path(local).expanduser().absolute()
        if not root.exists():
            raise PlanError(f"no such file or directory: {src}")
        if root.is_file():
            if nameable(root.resolve(), report):
                found.append(str(root.resolve()))
            continue
        found += [str(p) for p in walk(root, extensions, report)]
    for error in report.errors:
        log.warning("%s: %s", error.image, error.error)
    return sorted(dict.fromkeys(found)), [(e.image, e.error) for e in report.errors]


def same_sources(sources: list[str]) -> list[str]:
    """Sources as a run's manifest keeps them: local ones absolute (`photos/`, `./photos`,
    its absolute path and its `file://` URL are one source), without a trailing slash, sorted."""
    locals_ = [(s, _local(s)) for s in sources]  # (`file:///x` is the source `/x`)
    named = [s if p is None else os.path.abspath(os.path.expanduser(p)) for s, p in locals_]
    return sorted(s.rstrip("/") or "/" for s in named)


def _list_url(src: str, extensions: frozenset[str]) -> list[str]:
    try:
        import fsspec
    except ImportError:
        raise PlanError(f"{src}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        fs, root = fsspec.core.url_to_fs(src)
    except (ImportError, ValueError) as exc:
        raise PlanError(f"{src}: {exc}") from None
    try:
        names = [root] if fs.isfile(root) else fs.find(root)
    except (OSError, FileNotFoundError) as exc:
        raise PlanError(f"cannot list {src}: {exc}") from None
    if not names:
        raise PlanError(f"no such file or directory: {src}")
    wanted = [n for n in names if os.path.splitext(n)[1].lower() in extensions]
    return [fs.unstrip_protocol(n) for n in wanted]


def read_manifest(out: Path) -> Manifest:
    """The plan kept in `out`, checked: a manifest cut short or edited by hand (or a listing
    that does not match it) is one PlanError naming it, never a traceback or a run whose
    shards hold other files than the ones planned."""
    path = out / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise PlanError(_not_a_plan(path, f"not JSON: {exc}")) from None
    why = _manifest_fault(data)
    if why is not None:
        raise PlanError(_not_a_plan(path, why))
    manifest = Manifest(**data)
    try:
        meta = pq.read_metadata(out / LISTING)
    except (OSError, pa.ArrowException) as exc:
        raise PlanError(_not_a_plan(out / LISTING, f"unreadable: {exc}")) from None
    if (meta.num_row_groups, meta.num_rows) != (manifest.shards, manifest.files):
        why = f"{meta.num_rows} files in {meta.num_row_groups} shards, {MANIFEST} says "
        why += f"{manifest.files} in {manifest.shards}"
        raise PlanError(_not_a_plan(out / LISTING, why))
    return manifest


def _not_a_plan(path: Path, why: str) -> str:
    return f"{path} is not the plan imgsearch embed wrote there ({why}); use another --out"


def _manifest_fault(data: object) -> str | None:
    """What makes `data` no manifest (keys missing or unknown, a value of the wrong kind,
    counts that disagree); None where it is one."""
    if not isinstance(data, dict):
        return "not a JSON object"
    named = {f.name: f for f in fields(Manifest)}
    missing = [n for n, f in named.items() if n not in data and f.default is MISSING]
    unknown = sorted(str(k) for k in data if k not in named)
    faults = [f"no {', '.join(missing)}"] if missing else []
    faults += [f"unknown keys {', '.join(unknown)}"] if unknown else []
    if faults:
        return "; ".join(faults)
    if data["format"] != FORMAT:
        return f"format {data['format']!r}, not {FORMAT}"
    for name in ("dim", "shard_size", "shards", "files", "unlisted"):
        value, least = data.get(name, 0), 1 if name in ("dim", "shard_size") else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return f"{name} is {value!r}"
    sources = data["sources"]
    if not isinstance(data["model"], str) or not isinstance(sources, list):
        return "model must be text, sources a list"
    if not sources or not all(isinstance(s, str) for s in sources):
        return f"sources is {sources!r}"
    if data["shards"] != -(-data["files"] // data["shard_size"]):
        return f"{data['files']} files in shards of {data['shard_size']} are not {data['shards']}"
    return None


def load_or_make(
    out: Path, sources: list[str], model: str, dim: int, shard_size: int, extensions: frozenset[str]
) -> Plan:
    """The plan kept in `out`, checked against this run; or a new one, written there first."""
    path = out / MANIFEST
    if path.exists():
        manifest = read_manifest(out)
        if (manifest.model, manifest.dim) != (model, dim):
            raise PlanError(
                f"{out} holds a run of model {manifest.model} ({manifest.dim}-d), not {model} "
                f"({dim}-d); use another --out for another model"
            )
        if same_sources(manifest.sources) != same_sources(sources):
            raise PlanError(
                f"{out} holds a run of {manifest.sources}, not {sources}; use another --out"
            )
        return Plan(manifest)
    if shard_size < 1:
        raise PlanError(f"--shard-size must be at least 1, got {shard_size}")
    files, unlisted = list_sources(sources, extensions)
    if not files:
        raise PlanError(f"no image files under {', '.join(sources)}")
    shards = [files[i : i + shard_size] for i in range(0, len(files), shard_size)]
    manifest = Manifest(
        FORMAT, model, dim, same_sources(sources), shard_size, len(shards), len(files),
        len(unlisted),
    )  # fmt: skip
    (out / LISTING).parent.mkdir(parents=True, exist_ok=True)
    if unlisted:  # as a shard's failures are kept (shard.py): path, reason
        (out / FAILURES).parent.mkdir(parents=True, exist_ok=True)
        paths, reasons = [p for p, _ in unlisted], [r for _, r in unlisted]
        write_shard(out / FAILURES, pa.table({"path": paths, "reason": reasons}))
    numbers = [n for n, part in enumerate(shards) for _ in part]
    listing = pa.table({"shard": pa.array(numbers, pa.int32()), "path": files})
    write_shard(out / LISTING, listing, row_group_size=shard_size)  # row group N = shard N
    write_atomic(path, json.dumps(asdict(manifest), indent=1).encode(), shared=True)
    log.info("planned %d files in %d shards of %d", len(files), len(shards), shard_size)
    return Plan(manifest)

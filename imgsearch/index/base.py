"""The immutable base segment: a trained FAISS index, its sorted ids, and what it was tuned to.

A base is built once (by training or compaction), saved once into its own folder
(`<generation>-<kind>/`: meta.json, index.faiss, ids.npy, and for IVF kinds template.faiss,
for quantized ones the fine codes' quantizer, quantizers.FILES; written under a temporary
name, fsynced and renamed), and never changed after: searches read it without a lock. A
quantized base's fine codes are in a file beside the folders, shared by the bases of one
training (fine.py; meta.json names it). At start-up it is memory-mapped where FAISS allows it
(IO_FLAG_MMAP for IVF lists and flat codes).
The template is the trained index before any vector was added (coarse quantizer and codebooks,
no codes): the recent segment is a copy of it (segments.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FREE_SPACE, DiskFull, disk_full
from ..files import fsync
from . import quantizers
from .fine import Fine, FineTable, tables
from .policy import HNSW_ADD_EF, TARGET_RECALL, TUNE_QUERIES

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
META = "meta.json"
INDEX = "index.faiss"
IDS = "ids.npy"
TEMPLATE = "template.faiss"
# Kinds whose codes FAISS reads into RAM even with IO_FLAG_MMAP (fast-scan block lists).
READ_INTO_RAM = ("ivf-pqfs",)
# An index file is written PACE_BYTES at a time, each step flushed to disk (fdatasync) and
# dropped from the page cache (POSIX_FADV_DONTNEED) before the next. Written in one go, a 10M
# base (1.15 GB) sat in the page cache as dirty pages, pushed out the SQLite pages that the
# searches' re-scoring reads, and went to disk in one burst at the fsync, with those reads
# queued behind it (a 2.1 s search during a compaction at 10M; docs/BENCHMARKS.md).
PACE_BYTES = 32 << 20
# A base is written only where its disk has room for it by an estimate (room_for): the last
# saved base of its kind scaled by the vectors each holds, ROOM_MARGIN more, plus ROOM_SLACK.
# Written until the disk refused, a 10M base (1.2 GB) would leave the disk full for every other
# program, and for the daemon's own adds, until its temporary folder was deleted again.
ROOM_MARGIN = 0.1
ROOM_SLACK = 1 << 20


class IndexFileError(Exception):
    """A saved base cannot be used (missing, truncated, other model, newer than the database)."""


@dataclass(frozen=True)
class BaseMeta:
    """What a base says about itself."""

    model_id: str
    dim: int
    kind: str
    factory: str
    generation: int  # the database generation it holds everything up to
    count: int
    trained_count: int  # library size when the coarse quantizer was trained
    trained_at: float
    nprobe: int = 0
    recall: float | None = None
    rescore: int = 0  # candidates re-scored with exact vectors (k multiplier); 0 = none
    tuned_count: int = 0  # library size when nprobe and rescore were tuned (0: not recorded)
    # The file of its fine codes in the index folder ("": none; fine.py), which the tuning
    # counted on (a base loaded without them re-scores the whole pool: reads.py).
    fine: str = ""
    # The recall@10 the tuning aimed at (policy.Policy.target_recall, the daemon's --recall);
    # 0: not recorded (bases of earlier versions were tuned for policy.TARGET_RECALL).
    target: float = 0.0
    # How many queries the tuning searched (0: not recorded, policy.TUNE_QUERIES); fewer:
    # a provisional tuning, made during a bulk import (policy.HELD_TUNE_QUERIES).
    tune_queries: int = 0
    # The recall@10 on stored vectors it aimed at: the target with its margin
    # (policy.tuning_goal); 0: not recorded (bases of earlier versions, margin 0.02).
    aim: float = 0.0
    # Its lists were trained on the rows less their mean, probed by L2 (policy.Policy.centred;
    # False: on the rows as they are, by inner product, as every base before 2026-12-07).
    centred: bool = False

    @property
    def provisional(self) -> bool:
        """Whether nprobe and rescore were tuned on fewer queries than a full tuning's."""
        return self.kind != "exact" and 0 < self.tune_queries < TUNE_QUERIES

    @property
    def tuned_for(self) -> float:
        """The recall@10 target nprobe and rescore were chosen for."""
        return self.target or TARGET_RECALL


@dataclass(frozen=True)
class Base:
    index: Any  # a FAISS index holding ids (IndexIDMap2 or IndexIVF*)
    ids: np.ndarray  # sorted int64, every id in `index`
    meta: BaseMeta
    template: Any = None  # IVF kinds: the trained index, empty (bases of earlier versions: None)
    fine: Fine | None = None  # quantized kinds: codes to rank candidates by (earlier: None)

    def __len__(self) -> int:
        return len(self.ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are in this base (a boolean mask)."""
        if not len(self.ids):
            return np.zeros(len(ids), dtype=bool)
        where = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.asarray(self.ids[where] == ids)


def empty_exact(model_id: str, dim: int, generation: int) -> Base:
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    meta = BaseMeta(model_id, dim, "exact", "IDMap2,Flat", generation, 0, 0, time.time(), 0, 1.0)
    return Base(index, np.zeros(0, np.int64), meta)


def room_for(base: Base, folder: Path, previous: Path | None) -> None:
    """DiskFull where `folder`'s disk has less free than `base` is estimated to take, from the
    `previous` saved base (of the same kind; else, or unreadable, no estimate and no check)."""
    try:
        meta = json.loads((previous / META).read_text()) if previous else {}
        size, count = sum(meta["sizes"].values()), int(meta["count"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if meta.get("kind") != base.meta.kind:
        return
    need = int(size * max(1, len(base)) / max(1, count) * (1 + ROOM_MARGIN)) + ROOM_SLACK
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DiskFull(
            f"the index's next base needs about {need >> 20} MB and the data directory's disk "
            f"has {free >> 20} MB free: {FREE_SPACE}"
        )


def save(base: Base, folder: Path, previous: Path | None = None) -> Path:
    """Write the base into a new folder under `folder`, atomically; return its path. DiskFull
    first where there is no room for it by the estimate from the `previous` base (room_for)."""
    room_for(base, folder, previous)
    final = _new_name(folder, f"{base.meta.generation:012d}-{base.meta.kind}")
    tmp = final.with_name(final.name + TEMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(base, tmp)
    except BaseException:  # (a full disk, say): the part written would hold its space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)
    fsync(folder)
    return final


def _new_name(folder: Path, name: str) -> Path:
    """A folder for a new base that no saved one has: `name`, or `name.NNNNNN` after the
    highest such (sorted after it: newest first). A base tuned again keeps its generation and
    kind; written over the one in use (deleted first), a crash between the deletion, seconds
    at 10M, and the rename left no base at all, and a start trained a new one for minutes."""
    taken = [p.name for p in folder.glob(f"{name}*") if not p.name.endswith(TEMP_SUFFIX)]
    if name not in taken:
        return folder / name
    numbers = [int(t[len(name) + 1 :]) for t in taken if t[len(name) + 1 :].isdigit()]
    return folder / f"{name}.{max(numbers, default=0) + 1:06d}"


def _write(base: Base, tmp: Path) -> None:
    """The base's files and meta.json into the folder `tmp`, each fsynced."""
    write_paced(base.index, tmp / INDEX)
    np.save(tmp / IDS, base.ids)
    files = [INDEX, IDS]
    if base.template is not None:
        write_paced(base.template, tmp / TEMPLATE)
        files.append(TEMPLATE)
    if base.fine is not None:
        files.append(base.fine.quantizer.save(tmp))
        base.fine.table.flush()  # the rows this base counts on, on disk before it is
    meta = {**asdict(base.meta), "sizes": {f: (tmp / f).stat().st_size for f in files}}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    for f in (*files, META):
        fsync(tmp / f)


def kept(
    base: Base,
    folder: Path,
    model_id: str,
    dim: int,
    unsaved: bool = False,
    previous: Path | None = None,
) -> tuple[Base, Path | None]:
    """Save a new base (`previous`: the last one saved, save()); return what searches will
    read, and its folder: the files memory-mapped (the built copy is freed), or for fast-scan
    codes, which FAISS reads into RAM anyway, the built base itself (no second read of the
    file, no second copy while it is read). `unsaved`: where the disk is full, the built base
    itself and no folder."""
    try:
        path = save(base, folder, previous)
    except (OSError, DiskFull) as exc:
        if not unsaved or (full := disk_full(exc)) is None:
            raise
        log.warning("the index built is not saved (the next start builds it again): %s", full)
        return base, None
    if base.meta.kind in READ_INTO_RAM:
        return base, path
    return load(path, model_id, dim), path


def write_paced(index: Any, path: Path) -> None:
    """faiss.write_index in steps of PACE_BYTES, each on disk and out of the page cache before
    the next is written (the rest of the machine's cache, SQLite's pages, stays)."""
    import faiss

    with open(path, "wb") as fh:
        fd, done = fh.fileno(), [0, 0]  # bytes written, bytes flushed and dropped

        def flush() -> None:
            fh.flush()
            os.fdatasync(fd)
            if hasattr(os, "posix_fadvise"):  # (not on macOS: the cache keeps them there)
                os.posix_fadvise(fd, done[1], done[0] - done[1], os.POSIX_FADV_DONTNEED)
            done[1] = done[0]

        def write(data: bytes) -> int:
            fh.write(data)
            done[0] += len(data)
            if done[0] - done[1] >= PACE_BYTES:
                flush()
            return len(data)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]
        flush()


def saved(folder: Path) -> list[Path]:
    """Complete saved bases, newest first; stray temporaries removed."""
    if not folder.is_dir():
        return []
    for stray in folder.glob("*" + TEMP_SUFFIX):
        log.warning("removing %s left by an interrupted save", stray)
        shutil.rmtree(stray, ignore_errors=True)
    return sorted((p for p in folder.iterdir() if (p / META).exists()), reverse=True)


def orphans(folder: Path, used: set[str]) -> list[Path]:
    """Fine-code files in `folder` that no saved base names and that are not `used` (a crash
    during a training, or a training whose base could not be saved, left them: 2.5 GB at
    10M each)."""
    named = set(used)
    for path in saved(folder):
        try:
            named.add(json.loads((path / META).read_text()).get("fine") or "")
        except (OSError, ValueError):
            continue
    return [table for table in tables(folder) if table.name not in named]


def prune(folder: Path, keep: Path) -> None:
    """Delete every saved base but `keep`, and every fine-code file but the one it uses (a
    search may still read an old one: an unlinked file stays mapped until it is let go)."""
    for old in saved(folder):
        if old != keep:
            discard(old)
    try:
        used = json.loads((keep / META).read_text()).get("fine", "")
    except (OSError, ValueError):
        return
    for table in tables(folder):
        if table.name != used:
            table.unlink(missing_ok=True)


def discard(path: Path) -> None:
    """Delete a saved base (one pruned, or one that can never be used); renamed to a
    temporary first, so a crash midway never leaves a half-deleted base that looks complete."""
    doomed = path.with_name(path.name + ".old" + TEMP_SUFFIX)
    os.replace(path, doomed)
    # Files a search may still map (ids.npy, an exact base's codes) are unlinked whole: a
    # truncated mapping faults. Fast-scan codes and templates were read into RAM.
    if path.name.split("-", 1)[-1].split(".", 1)[0] in READ_INTO_RAM:  # (its kind)
        for name in (INDEX, TEMPLATE):
            try:
                unlink_paced(doomed / name)
            except OSError:
                pass  # missing: nothing to pace; rmtree below says nothing either
    shutil.rmtree(doomed, ignore_errors=True)


def unlink_paced(path: Path) -> None:
    """Delete a file PACE_BYTES at a time from its end, each step committed (fsync) before
    the next: the file system frees (and, mounted with `discard`, trims) a 1.2 GB base in
    small steps instead of one burst that the searches' reads queue behind."""
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        while size > PACE_BYTES:
            size -= PACE_BYTES
            fh.truncate(size)
            os.fsync(fh.fileno())
    path.unlink()


def load(path: Path, model_id: str, dim: int, *, mmap: bool = True) -> Base:
    """Open a saved base (memory-mapped where FAISS allows); IndexFileError saying why not."""
    import faiss

    try:
        raw = json.loads((path / META).read_text())
        sizes = raw.pop("sizes")
        meta = BaseMeta(**raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise IndexFileError(f"{path}: unreadable meta.json: {exc}") from None
    if (meta.model_id, meta.dim) != (model_id, dim):
        raise IndexFileError(f"{path}: made by {meta.model_id} ({meta.dim}-d)")
    for name, size in sizes.items():
        if not (path / name).exists() or (path / name).stat().st_size != size:
            raise IndexFileError(f"{path}: {name} is missing or truncated")
    # Flat codes map with MMAP_IFC, inverted lists with MMAP (the two do not combine).
    flags = (faiss.IO_FLAG_MMAP_IFC if meta.kind == "exact" else faiss.IO_FLAG_MMAP) if mmap else 0
    try:
        index = faiss.read_index(str(path / INDEX), flags)
        ids = np.load(path / IDS, mmap_mode="r" if mmap else None)
        template = faiss.read_index(str(path / TEMPLATE)) if TEMPLATE in sizes else None
        fine = _fine(path, meta, ids)
    except (RuntimeError, ValueError, OSError) as exc:
        raise IndexFileError(f"{path}: FAISS cannot read it: {exc}") from None
    if int(index.ntotal) != meta.count or len(ids) != meta.count or index.d != dim:
        raise IndexFileError(f"{path}: contents do not match meta.json")
    if template is not None and (template.ntotal or template.d != dim):
        raise IndexFileError(f"{path}: {TEMPLATE} is not an empty index of {dim}-d")
    # Bases saved by earlier versions add at FAISS's default efSearch.
    return Base(for_adding(index), ids, meta, for_adding(template), fine)


def _fine(path: Path, meta: BaseMeta, ids: np.ndarray) -> Fine | None:
    """The fine codes a saved base names, if their file is there and covers its ids (else
    None: the worker writes new ones, LibraryIndex.maintain; searches re-score from the store
    meanwhile)."""
    if not meta.fine:
        return None
    name = next((f for f in quantizers.FILES if (path / f).exists()), None)
    quantizer = quantizers.load(path, name) if name else None
    found = path.parent / meta.fine
    table = FineTable(found, quantizer.code_size) if quantizer and found.exists() else None
    if quantizer is None or table is None or not table.covers(int(ids[-1]) if len(ids) else 0):
        log.warning("%s: its fine codes (%s) are missing or short: made again", path, found.name)
        return None
    return Fine(quantizer, table)


def emptied(index: Any) -> Any:
    """The template of an IVF index: a copy with no vectors (for bases saved without one)."""
    import faiss

    template = faiss.clone_index(index)
    template.reset()
    return template


def for_adding(index: Any) -> Any:
    """`index` with its HNSW coarse quantizer (if any) set to policy.HNSW_ADD_EF, the
    efSearch an add uses (searches set their own); copies (clone_index) keep it."""
    import faiss

    part = None if index is None else ivf(index)
    graph = None if part is None else faiss.downcast_index(part.quantizer)
    if isinstance(graph, faiss.IndexHNSW):
        graph.hnsw.efSearch = HNSW_ADD_EF
    return index


def ivf(index: Any) -> Any | None:
    """The IVF part of an index (for its nlist), or None for a flat one."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None

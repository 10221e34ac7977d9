"""The tree of centres (imgsearch/index/tree.py) in its variants, on a kept library's lists:
how many groups, and whether members are compared whole or in the centres' leading
principal directions.

    python bench/tree_dims.py --data /work/big/K10/data --n 10000000 --dist spectral
    python bench/tree_dims.py --centres lists.npy --n 1000000 \
        --shards bench/out/scale-shards-efficientnet-lite0_imagenet-clustered-1000000

DATA_DIR is a library bench/scale.py --keep left; its newest base's template gives the trained
centres (rotated templates: the centres as the placer sees them, unrotated); or --centres, a
.npy of k x d centres (a training's lists saved ad hoc). --rows rows from
the middle of bench/scale.py's cached shards for --n (or of --shards; rows the lists were
not trained on, where the library's training sample missed them) are
assigned in the import's 20,000-row batches by each variant in turn, --rounds times (order
reversed every other round): wall and CPU microseconds a row (both threads of FAISS's team, as
the placer runs it), the share of rows given their nearest centre (exact float32 search), and
how much less similar the chosen centre is (mean over all rows, and over the rows missed),
the largest group, the centres a row is compared with (mean over the first batch), and the
tree's own estimate of its work (CentreTree.share: whether the index would use it).
Variants: "groups/sqrt:kept[:probes[:threads]]", kept 1.0 meaning members compared whole,
probes the groups a row is compared with (default tree.PROBES), threads the OpenMP team of the
groups' products (default tree.GROUP_THREADS).
Appends one JSON line to bench/out/tree_dims.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, cpu_model, progress, record, shard_vectors  # noqa: E402

from imgsearch.cpu import faiss_team  # noqa: E402
from imgsearch.index import tree as T  # noqa: E402
from imgsearch.index.placing import Placer  # noqa: E402

BATCH = 20_000
PROBES = T.PROBES  # (the module's, before a variant sets its own)


def centres_of(data: Path) -> np.ndarray:
    """The newest base's trained centres, unrotated (as the placer compares rows with them)."""
    import faiss

    templates = sorted((data / "index").glob("*/template.faiss"))
    if not templates:
        raise SystemExit(f"no saved base with a template under {data / 'index'}")
    template = faiss.read_index(str(templates[-1]))
    ivf = faiss.extract_index_ivf(template)
    quantizer = faiss.downcast_index(ivf.quantizer)
    flat = faiss.rev_swig_ptr(quantizer.get_xb(), ivf.nlist * ivf.d)
    centres = np.array(flat, np.float32).reshape(ivf.nlist, ivf.d)
    placer = Placer.of(template, tree_from=0)
    if placer is not None and placer.coded is not None:
        centres = placer.coded.unrotated(centres)
    return centres


def run(centres: np.ndarray, rows: np.ndarray, variant: str) -> dict[str, float]:
    fields = [float(v) for v in variant.split(":")]
    groups, kept = fields[:2]
    probes = int(fields[2]) if len(fields) > 2 else PROBES
    threads = int(fields[3]) if len(fields) > 3 else T.GROUP_THREADS
    T.GROUPS_PER_SQRT, T.VARIANCE_KEPT, T.PROBES = groups, kept, probes
    T.MAX_SHARE = 1.0 if kept < 1 else 0.0  # kept 1.0: compared whole
    with faiss_team():
        start = time.perf_counter()
        tree = T.CentreTree(centres, group_threads=threads)
        built = time.perf_counter() - start
        tree.nearest(rows[:BATCH])  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        found = np.concatenate(
            [tree.nearest(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    import torch

    first = torch.from_numpy(np.ascontiguousarray(rows[:BATCH], np.float32))
    probed = torch.mm(first, tree.means).topk(tree.probes, dim=1).indices.numpy()
    sizes = np.diff(tree.starts)
    dims = centres.shape[1] if tree.project is None else int(tree.project.shape[1])
    return {
        "groups": len(tree.columns), "dims": dims, "largest": int(sizes.max()),
        "compared": float(sizes[probed].sum(axis=1).mean()), "share": round(tree.share, 4),
        "built_s": round(built, 2),
        "wall_us": wall * 1e6 / len(rows), "cpu_us": cpu * 1e6 / len(rows),
        "found": found,  # type: ignore[dict-item]
    }  # fmt: skip


def lists_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    """The arguments naming the centres (--data or --centres) and the rows' shards."""
    parser.add_argument("--data", type=Path, help="a kept library (its newest base's lists)")
    parser.add_argument("--centres", type=Path, help="or a .npy of centres (k x d)")
    parser.add_argument("--shards", type=Path, help="rows from these shards, not --n/--dist's")
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--dist", default="spectral")


def lists_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[np.ndarray, Path]:
    """The centres and the shards that lists_arguments' arguments name."""
    if (args.data is None) == (args.centres is None):
        parser.error("give --data or --centres")
    shards = args.shards or OUT_DIR / f"scale-shards-open_clip_ViT-B-32_random-{args.dist}-{args.n}"
    centres = centres_of(args.data) if args.data else np.load(args.centres).astype(np.float32)
    return centres, shards


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    lists_arguments(parser, 10_000_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["1:1", "2:1", "2:0.97", "2:0.98"])
    args = parser.parse_args()
    centres, shards = lists_of(parser, args)
    middle = min(args.n // 2, 5_000_000)
    rows = shard_vectors(shards, middle, centres.shape[1])[-args.rows :]
    sims, best = faiss.knn(rows, centres, 1, faiss.METRIC_INNER_PRODUCT)
    best, top = best[:, 0], sims[:, 0]
    out: dict[str, Any] = {"cpu": cpu_model(), "load": os.getloadavg(), "lists": len(centres)}
    out.update(rows=len(rows), data=str(args.data or args.centres), shards=str(shards), variants={})
    for r in range(args.rounds):
        for variant in args.variants if r % 2 == 0 else args.variants[::-1]:
            got = run(centres, rows, variant)
            found = got.pop("found")
            lost = top - np.einsum("ij,ij->i", rows, centres[found])
            missed = found != best
            got.update(
                nearest=float(1 - missed.mean()),
                lost_mean=float(lost.mean()),
                lost_missed=float(lost[missed].mean()) if missed.any() else 0.0,
            )
            out["variants"].setdefault(variant, []).append(got)
            progress(f"{variant}: {got}")
    record(out, "tree_dims")


if __name__ == "__main__":
    main()

"""Start to /health, and to the first image search, for one or more source trees, in turns.

    python bench/startup.py                                  # this tree, 5 rounds
    git worktree add /tmp/before 584dc94
    python bench/startup.py --trees /tmp/before . --rounds 5 --cold
    python bench/startup.py --trees /tmp/before . --checkpoint   # weights from a file
    python bench/startup.py --data /work/big/k10 --weights random checkpoint --rounds 3

One data dir (ViT-B-32 with random weights, 20 photos added) is started by each tree in turn,
A B A B ...: the seconds until /health answers, until the first search by a stored photo's path
has answered (decoded, embedded: it waits for anything the model still does after /health),
and what /stats said of the precision at /health. `--cold` drops the page cache before each
start (root only): the daemon's own libraries and files then come from the disk, as after a
reboot or a pass over more data than the RAM holds. Prints one JSON object and appends it to
bench/out/startup.jsonl.

`--checkpoint` starts with `--checkpoint FILE` instead of random weights, as a user with
real weights does (a tag's weights come from the Hugging Face cache the same way): the file
holds the same seeded random ViT-B-32, saved once to bench/out/, and is named `random`, so the
model's id is the one random weights have (open_clip/ViT-B-32/random) and a library made with
either is served by both. `--weights random checkpoint` starts each tree both ways in turns.

`--data DIR` starts on a library left by `bench/scale.py --keep` (ViT-B-32 vectors; the data
dir is only read and appended to by the searches) instead of a new one of 20 photos; the first
image search is then by one of the 20 photos' files (not stored: decoded and embedded).

`--searches N` then times N searches by vector (random Gaussian vectors, which the daemon
scales to unit length; a new seed each start), one after another right after that first image
search: what the first users of a restarted daemon wait while the pages its searches read
come in (on a big library, from the disk).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, Daemon, generate_jpegs, progress, record  # noqa: E402
from scale import machine, post_json  # noqa: E402

FLAGS = ["--model", "ViT-B-32", "--pretrained", "none", "--workers", "1"]
# Named `random`: the model's id is then that of the random weights (clip.ClipEmbedder).
CHECKPOINT = REPO_ROOT / "bench" / "out" / "vit-b-32-seeded" / "random"


def saved_checkpoint() -> Path:
    """The seeded random ViT-B-32's weights as a checkpoint file (written once)."""
    if not CHECKPOINT.is_file():
        import torch

        from imgsearch.embedders.clip import ClipEmbedder

        model = ClipEmbedder(
            "ViT-B-32", pretrained=None, checkpoint=None, model_config=None, device="cpu"
        )
        CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        partial = CHECKPOINT.with_suffix(".part")
        torch.save(model._model.state_dict(), partial)
        partial.rename(CHECKPOINT)
    return CHECKPOINT


def drop_page_cache() -> None:
    """Write dirty pages back, then drop the clean ones (needs root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def one_start(
    tree: Path, data_dir: Path, photo: str, cold: bool, flags: list[str], searches: int = 0
) -> dict[str, Any]:
    """Start the daemon from `tree`; time /health, the first image search and `searches`
    searches by vector after it; stop it."""
    if cold:
        drop_page_cache()
    daemon = Daemon(flags, data_dir, tree=tree)
    started = time.perf_counter()
    with daemon:
        health = time.perf_counter() - started
        embedding = daemon.get("/stats")["embedding"]
        daemon.get("/search?limit=10&image=" + urllib.parse.quote(photo))
        first = time.perf_counter() - started
        final = daemon.get("/stats")["embedding"]["precision"]
        dim = int(daemon.get("/stats")["dim"])
        rng = random.Random(time.time_ns())
        vector_ms = []
        for _ in range(searches):
            query = [rng.gauss(0.0, 1.0) for _ in range(dim)]
            vector_ms.append(post_json(daemon.url + "/search", {"vector": query, "limit": 10})[1])
    return {
        "vector_search_ms": _spread(vector_ms),
        "health_s": health,
        "first_image_search_s": first,
        "precision_at_health": embedding.get("precision"),
        "checking_at_health": embedding.get("precision_checking"),
        "precision": final,
    }


def _spread(ms: list[float]) -> dict[str, float] | None:
    """First, p50, p90 and worst of a run of latencies (None: none ran)."""
    if not ms:
        return None
    ranked = sorted(ms)
    return {
        "first": ms[0],
        "p50": statistics.median(ms),
        "p90": ranked[int(0.9 * (len(ranked) - 1))],
        "max": ranked[-1],
        "count": len(ms),
    }


def _name(tree: Path, way: str, weights: list[str]) -> str:
    """An arm's name in the results: its tree, and its weights where more than one way ran."""
    return f"{tree} ({way})" if len(weights) > 1 else str(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", nargs="+", default=[str(REPO_ROOT)])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each")
    parser.add_argument("--label", default="")
    parser.add_argument("--checkpoint", action="store_true", help="weights from a file")
    parser.add_argument(
        "--weights", nargs="+", choices=("random", "checkpoint"), default=None,
        help="start each tree with these weights in turns (default: --checkpoint's choice)",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=None, help="an existing library's data dir")
    parser.add_argument("--searches", type=int, default=0, help="searches by vector after each")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    weights = args.weights or ["checkpoint" if args.checkpoint else "random"]
    flags = {"random": FLAGS}
    if "checkpoint" in weights:
        checkpoint = str(saved_checkpoint())
        flags["checkpoint"] = ["--model", "ViT-B-32", "--checkpoint", checkpoint, "--workers", "1"]
    arms = [(tree, way) for tree in trees for way in weights]
    out: dict[str, Any] = {
        "machine": machine(),
        "label": args.label,
        "cold": args.cold,
        "weights": weights,
        "data": str(args.data) if args.data else None,
    }
    photos = sorted(
        str(p) for p in generate_jpegs(20, size=(1024, 768), quality=90, seed=7).glob("*.jpg")
    )
    runs: dict[str, list[dict[str, Any]]] = {_name(*arm, weights): [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="imgsearch-startup-") as tmp:
        data_dir = args.data or Path(tmp) / "data"
        if args.data is None:
            with Daemon(flags[weights[0]], data_dir, tree=trees[0]) as daemon:
                folder = str(Path(photos[0]).parent)
                daemon.get("/add?image=" + urllib.parse.quote(folder))
        for r in range(args.rounds):
            for tree, way in arms:
                photo = photos[r % len(photos)]
                run = one_start(tree, data_dir, photo, args.cold, flags[way], args.searches)
                runs[_name(tree, way, weights)].append(run)
                progress(f"round {r + 1}, {tree} {way}: {run}")
    out["trees"] = {
        tree: {
            "health_s_median": statistics.median(r["health_s"] for r in rs),
            "first_image_search_s_median": statistics.median(r["first_image_search_s"] for r in rs),
            "runs": rs,
        }
        for tree, rs in runs.items()
    }
    if len(runs) == 2:
        a, b = runs.values()
        out["health_ratio_median"] = statistics.median(
            x["health_s"] / y["health_s"] for x, y in zip(a, b, strict=True)
        )
        out["first_search_ratio_median"] = statistics.median(
            x["first_image_search_s"] / y["first_image_search_s"] for x, y in zip(a, b, strict=True)
        )
    record(out, "startup")


if __name__ == "__main__":
    main()

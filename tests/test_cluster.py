"""`imgsearch embed` on a real local Ray cluster: the daemon's vectors, resumable shards, import."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.cluster.plan import PlanError
from imgsearch.cluster.runner import EmbedOptions, Summary, embed
from imgsearch.config import OFFLINE_MODEL, Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app

from .helpers import TINY_MODEL, ClientFactory, free_port, get_json

# A real Ray cluster (started once per session) and the real model: the full lane only.
pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One small local Ray for the whole session (2 CPUs, a 150 MB object store)."""
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=150 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def archive(photos: dict[str, Path]) -> Path:
    """The sample photos plus one truncated JPEG and one file that is no image at all."""
    folder = next(iter(photos.values())).parent
    data = (folder / "astronaut.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.png").write_bytes(b"just text")
    return folder


def run(config: Config, src: Path | str, out: Path, **kwargs: Any) -> Summary:
    options = EmbedOptions([str(src)], out, config, workers=2, shard_size=2, **kwargs)
    return embed(options, show_progress=False)


def rows(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("shard-*.parquet"))])


def by_path(table: pa.Table) -> dict[str, np.ndarray]:
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    return dict(zip(table.column("path").to_pylist(), vectors.astype(np.float32), strict=True))


async def added_vectors(client: Client, folder: Path, tmp: Path) -> dict[str, np.ndarray]:
    """What /add stores for the folder's files (read back through /export)."""
    await get_json(client, "/add", image=str(folder))
    await get_json(client, "/export", dir=str(tmp))
    return by_path(rows_any(tmp))


def rows_any(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def assert_same_vectors(ours: dict[str, np.ndarray], added: dict[str, np.ndarray]) -> None:
    """The same vectors to float16's precision: cosine >= 0.9999 (the export writes the store's
    float16 as it is, unit length only to ~1e-4)."""
    assert sorted(ours) == sorted(added)
    for path, vector in ours.items():
        other = added[path]
        cosine = float(vector @ other) / float(np.linalg.norm(vector) * np.linalg.norm(other))
        assert cosine >= 0.9999, path


async def test_tiny_clip_shards_match_add_and_resume_without_duplicates(
    ray_cluster: None,
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    archive: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    summary = run(config, archive, out)
    assert (summary.images, summary.failed, summary.shards) == (5, 2, 4)
    failures = rows_any(out / "failures").to_pylist()
    assert sorted(Path(f["path"]).name for f in failures) == ["notes.png", "truncated.jpg"]
    first = rows(out)
    assert first.schema.metadata[b"imgsearch.model"] == tiny_embedder.model_id.encode()
    assert pq.ParquetFile(out / "plan" / "listing.parquet").num_row_groups == 4  # one per shard

    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))
    assert_same_vectors(by_path(first), await added_vectors(client, archive, tmp_path / "exp"))

    # Killed with two shards in flight: their files never appeared (only a temp file did).
    for shard in ("shard-00001.parquet", "shard-00003.parquet"):
        (out / shard).unlink()
    (out / ".tmp-x.parquet").write_bytes(b"half a shard")
    again = run(config, archive, out)
    assert (again.skipped_shards, again.images + again.failed) == (2, 3)
    second = rows(out)
    assert sorted(second.column("path").to_pylist()) == sorted(first.column("path").to_pylist())
    assert len(set(second.column("path").to_pylist())) == second.num_rows == 5
    assert_same_vectors(by_path(second), by_path(first))
    assert run(config, archive, out).skipped_shards == 4  # all done: nothing runs

    other = dataclasses.replace(config, model=OFFLINE_MODEL, pretrained=None, model_config=None)
    with pytest.raises(PlanError, match="another --out for another model"):
        run(other, archive, out)


async def test_lite0_shards_import_and_answer_like_add(
    ray_cluster: None,
    aiohttp_client: ClientFactory,
    lite0: Embedder,
    photos: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = next(iter(photos.values())).parent
    cfg = Config(data_dir=tmp_path / "added", model=OFFLINE_MODEL, batch_size=4).resolved()
    out = tmp_path / "run"
    assert run(cfg, folder, out).images == 5
    added = await aiohttp_client(create_app(cfg, embedder=lite0))
    assert_same_vectors(by_path(rows(out)), await added_vectors(added, folder, tmp_path / "exp"))

    imported_cfg = dataclasses.replace(cfg, data_dir=tmp_path / "imported")
    imported = await aiohttp_client(create_app(imported_cfg, embedder=lite0))
    resp = await imported.post("/import", json={"dir": str(out), "wait": True})
    assert (await resp.json())["imported"] == 5
    crops = tmp_path / "crops"
    crops.mkdir()
    from PIL import Image

    for name, path in photos.items():
        with Image.open(path) as img:
            w, h = img.size
            crop = crops / f"{name}.jpg"
            img.crop((w // 8, h // 8, w * 7 // 8, h * 7 // 8)).save(crop)
        a = (await get_json(added, "/search", image=str(crop), limit=3))["results"]
        b = (await get_json(imported, "/search", image=str(crop), limit=3))["results"]
        assert a[0]["image"] == b[0]["image"] == str(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no such file or directory"),
        (["--ray", f"127.0.0.1:{free_port()}"], "cannot reach the Ray cluster"),
    ],
)
def test_cli_missing_source_or_cluster_is_one_clear_error(
    tmp_path: Path, tiny_model_config: Path, extra: list[str], message: str
) -> None:
    src = tmp_path / "nope" if not extra else tmp_path
    cmd = [sys.executable, "-m", "imgsearch", "embed", str(src), "--out", str(tmp_path / "out")]
    cmd += ["--model", "imgsearch-test-tiny", "--pretrained", "none", *extra]
    cmd += ["--model-config", str(tiny_model_config), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def in_memory(archive: Path, tmp_path: Path) -> Iterator[str]:
    """The archive's files in fsspec's memory filesystem (this process's only), as a URL: a
    filesystem of another scheme, as s3:// is."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}/pics"
    for path in archive.iterdir():
        fs.pipe(f"{root}/{path.name}", path.read_bytes())
    yield f"memory://{root}"
    fs.rm(f"/{tmp_path.name}", recursive=True)


def test_embed_shard_alone_reads_fsspec_urls(
    tiny_embedder: Embedder, in_memory: str, tmp_path: Path
) -> None:
    """The pure function without Ray, on URLs listed through fsspec."""
    from imgsearch.cluster.plan import list_sources
    from imgsearch.cluster.shard import Limits, embed_shard
    from imgsearch.images import BASE_EXTENSIONS

    urls, _ = list_sources([in_memory], BASE_EXTENSIONS)
    assert len(urls) == 7 and all(u.startswith(f"{in_memory}/") for u in urls)
    out = tmp_path / "out"
    out.mkdir()
    result = embed_shard(3, urls, tiny_embedder, Limits(10**7, 10**8, batch_size=2), out)
    assert (result.images, result.failed) == (5, 2)
    table = pq.read_table(out / "shard-00003.parquet")
    assert all(p.startswith(f"{in_memory}/") for p in table.column("path").to_pylist())
    assert table.column("mtime_ns").null_count == 5  # unknown for URLs: /add re-embeds them
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    failed = pq.read_table(out / "failures" / "shard-00003.parquet").to_pylist()
    assert {Path(f["path"]).name for f in failed} == {"notes.png", "truncated.jpg"}
    assert all(f["reason"] for f in failed)


def test_without_ray_embed_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, config: Config, tmp_path: Path
) -> None:
    from imgsearch.cluster.runner import INSTALL_HINT, ClusterError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(ClusterError) as exc:
        run(config, tmp_path, tmp_path / "out")
    assert exc.value.message == INSTALL_HINT and "imgsearch[cluster]" in INSTALL_HINT


def test_a_run_others_can_read_that_records_every_file_and_leaves_a_crashing_shard(
    ray_cluster: None, config: Config, archive: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """What embed writes was 0600 (mkstemp's): a daemon of another user could not import it.
    Files the listing could not take (a broken link, a name that is not UTF-8) were only
    logged, and gone from a rerun's log too. A shard whose worker dies on a file (a decoder's
    crash, the OOM killer) was retried for good: the run never ended. The same sources
    spelled otherwise (`photos/`) were refused as another run."""
    import imgsearch.cluster.runner as runner
    from imgsearch.cluster.plan import shard_files

    (archive / "broken.jpg").symlink_to(archive / "gone.jpg")
    (archive / os.fsdecode(b"caf\xe9.jpg")).write_bytes((archive / "coffee.jpg").read_bytes())
    base = runner.ShardWorker

    class Crashing(base):  # type: ignore[misc, valid-type]
        def __call__(self, batch: dict[str, Any]) -> Any:
            for shard in batch["shard"]:
                if any(p.endswith("chelsea.jpg") for p in shard_files(self.out, int(shard))):
                    os._exit(1)  # what a segfault in a decoder does to its worker
            return super().__call__(batch)

    monkeypatch.setattr(runner, "ShardWorker", Crashing)
    old = os.umask(0o022)
    try:
        summary = run(config, archive, tmp_path / "run")
    finally:
        os.umask(old)
    assert summary.unlisted == 2 and len(summary.unfinished) == 1
    left = shard_files(tmp_path / "run", summary.unfinished[0])  # chelsea's, with its partner
    assert summary.images + summary.failed + len(left) == 7  # 5 photos, 2 files no image
    unlisted = pq.read_table(tmp_path / "run" / "failures" / "plan.parquet").to_pylist()
    assert sorted(Path(f["path"]).name for f in unlisted) == ["broken.jpg", "caf\\xe9.jpg"]
    written = [*(tmp_path / "run").glob("shard-*.parquet"), tmp_path / "run" / "manifest.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
    monkeypatch.setattr(runner, "ShardWorker", base)
    again = run(config, Path(str(archive) + "/"), tmp_path / "run")  # the same source
    assert (again.skipped_shards, again.unfinished) == (summary.shards - 1, [])
    with pytest.raises(PlanError, match="--shard-size must be at least 1"):
        embed(EmbedOptions([str(archive)], tmp_path / "other", config, shard_size=0))


async def test_file_urls_are_embedded_as_paths_and_other_urls_import_through_a_path_map(
    ray_cluster: None,
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    archive: Path,
    in_memory: str,
    tmp_path: Path,
) -> None:
    """Before: a file:// source's rows were file:// URLs, as an s3:// one's are s3:// URLs;
    the import refuses any path but an absolute one or an http(s) URL, and --path-map refused
    such an OLD: no run from a URL could ever be imported."""
    from imgsearch.bulk.importjob import PathMap
    from imgsearch.cluster.shard import Limits, embed_shard
    from imgsearch.errors import BadRequest

    out = tmp_path / "run"
    assert run(config, f"file://{archive}", out).images == 5
    photos = sorted(str(p) for p in archive.glob("*.jpg") if p.name != "truncated.jpg")
    assert sorted(rows(out).column("path").to_pylist()) == photos
    assert run(config, archive, out).skipped_shards == 4  # its folder's path: the same run
    client = await aiohttp_client(create_app(config, embedder=tiny_embedder))

    async def imported(folder: Path, *path_map: str) -> Any:
        body = {"dir": str(folder), "wait": True, "path_map": list(path_map)}
        resp = await client.post("/import", json=body)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    assert ((job := await imported(out))["imported"], job["failed"]) == (5, 0)
    urls = tmp_path / "urls"  # rows of another scheme keep their URLs: mapped at the import
    urls.mkdir()
    files = [f"{in_memory}/{name}" for name in sorted(p.name for p in archive.iterdir())]
    embed_shard(0, files, tiny_embedder, Limits(10**7, 10**8, batch_size=2), urls)
    job = await imported(urls)
    assert job["failed"] == 5 and "--path-map" in job["errors"][0]["error"]
    job = await imported(urls, f"{in_memory}={tmp_path / 'mapped'}")
    assert (job["imported"], job["failed"]) == (5, 0)
    await get_json(client, "/export", dir=str(tmp_path / "exp"))
    mapped = [str(tmp_path / "mapped" / Path(p).name) for p in photos]
    exported = rows_any(tmp_path / "exp").column("path").to_pylist()
    assert sorted(exported) == sorted(photos + mapped)
    assert PathMap.parse(["s3://b/x=/mnt/x"])("s3://b/x/y/a.jpg") == "/mnt/x/y/a.jpg"
    with pytest.raises(BadRequest, match="NEW must be an absolute path"):
        PathMap.parse(["/mnt/x=s3://b/x"])


def test_a_shard_that_raises_is_named_and_an_out_that_cannot_be_written_stops_the_run(
    ray_cluster: None, config: Config, archive: Path, tmp_path: Path
) -> None:
    """Before: an error raised in a worker (no room or no permission in --out) was a traceback
    in Ray Data's log for every shard, each shard embedding all its files first, and the run
    ended as if it had succeeded."""
    out = tmp_path / "run"
    (out / "failures" / "shard-00001.parquet").mkdir(parents=True)  # this shard's write fails
    summary = run(config, archive, out)
    assert (summary.unfinished, list(summary.errors), summary.stopped) == ([1], [1], None)
    assert summary.errors[1] == f"Is a directory: {out / 'failures'}"
    assert summary.images + summary.failed == 5  # the other shards' files
    other = tmp_path / "other"
    other.mkdir()
    (other / "failures").write_text("not a folder")  # as a full or read-only disk: every shard
    stopped = run(config, archive, other)
    assert stopped.stopped == f"shard {min(stopped.errors)}: File exists: {other / 'failures'}"
    assert (stopped.unfinished, stopped.images) == ([0, 1, 2, 3], 0)
    (other / "failures").unlink()
    assert run(config, archive, other).images == 5  # (the stopped run let its workers go)


CRASHING = """
import os, sys
import imgsearch.cluster.runner as runner
from imgsearch.cli import main
from imgsearch.cluster.plan import shard_files

class Crashing(runner.ShardWorker):
    def __call__(self, batch):
        if any(p.endswith("chelsea.jpg") for p in shard_files(self.out, int(batch["shard"][0]))):
            os._exit(1)  # what a segfault in a decoder does to its worker
        return super().__call__(batch)

runner.ShardWorker = Crashing
sys.exit(main(sys.argv[1:]))
"""


def cli_embed(
    src: Path, out: Path, model_config: Path, *flags: str, script: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`imgsearch embed` on the session's Ray cluster (joined: no second one is started)."""
    import ray

    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, *([str(script)] if script else ["-m", "imgsearch"]), "embed"]
    cmd += [str(src), "--out", str(out), "--ray", address, "--model", TINY_MODEL, *flags]
    cmd += ["--pretrained", "none", "--model-config", str(model_config), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_shards_not_written_exit_1_and_json_stays_json(
    ray_cluster: None, archive: Path, tmp_path: Path, tiny_model_config: Path
) -> None:
    """Before: a run whose workers died on a shard exited 0, and `--json` printed Ray's
    `(raylet) A worker died ...` lines on stdout before the summary."""
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    out = tmp_path / "run"
    done = cli_embed(archive, out, tiny_model_config, "--shard-size", "2", "--json", script=script)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["unfinished_shards"] and summary["images"] < 5
    n = len(summary["unfinished_shards"])
    assert f"{n} shard{'s' * (n > 1)} not written; run the same command again" in done.stderr
    again = cli_embed(archive, out, tiny_model_config, "--shard-size", "2", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["unfinished_shards"] == []


@pytest.mark.parametrize("flags", [["--cpus-per-worker", "4"], ["--gpus-per-worker", "1"]])
def test_cli_a_worker_no_node_can_hold_is_one_error_not_a_hang(
    ray_cluster: None, archive: Path, tmp_path: Path, tiny_model_config: Path, flags: list[str]
) -> None:
    """Before: Ray waited for such a worker for good (the session's cluster has 2 CPUs and
    no GPU; this test timed out)."""
    done = cli_embed(archive, tmp_path / "run", tiny_model_config, *flags)
    assert done.returncode == 2, done.stderr
    assert "no node of the cluster can hold a worker" in done.stderr
    assert "it has 2 CPUs and 0 GPUs in all" in done.stderr and "Traceback" not in done.stderr

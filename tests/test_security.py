"""Web pages cannot drive the daemon: Host, Origin, Sec-Fetch-Site, token, allowed roots."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.comparators.cache import FeatureCache
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import ConfigError, Forbidden
from imgsearch.images import read_file
from imgsearch.security import PathPolicy
from imgsearch.store import FileFacts, NewImage
from imgsearch.web import create_app
from imgsearch.web.guard import host_name, masked
from imgsearch.web.keys import SERVICE

from .helpers import ClientFactory, photo

Client = TestClient[web.Request, web.Application]


async def status_and_body(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.get(path, **kwargs)
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("host", "name"),
    [("localhost:8080", "localhost"), ("[::1]:80", "::1"), ("127.0.0.1", "127.0.0.1"),
     ("::1", "::1"), ("evil.example:8080", "evil.example"), ("[::1]", "::1"),
     ("[::1]evil.com", ""), ("127.0.0.1:x@evil.com", ""), ("[::1]:x", ""),
     ("localhost:", "localhost")],
)  # fmt: skip
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


def test_logged_paths_hide_the_token() -> None:
    assert masked("/search?image=/a.jpg&token=s3cret&x=1") == "/search?image=/a.jpg&token=***&x=1"
    assert "s3cret" not in masked('GET /stats?token=s3cret HTTP/1.1" 200')


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "localhost:8080"}, 200),
        ({"Host": "[::1]:8080"}, 200),
        ({"Host": "attacker.example:8080"}, 403),
        ({"Host": "127.0.0.1.nip.io"}, 403),
        ({"Origin": "http://attacker.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),
    ],
)
async def test_browser_requests_are_refused_on_every_route(
    client: Client, headers: dict[str, str], status: int
) -> None:
    for path in ("/stats", "/health", "/add", "/search", "/nowhere"):
        code, body = await status_and_body(client, path, headers=headers)
        if status == 403:
            assert (code, body["status"]) == (403, 403), path
        else:
            assert code != 403, path


async def test_same_origin_page_is_allowed(client: Client) -> None:
    host = f"127.0.0.1:{client.port}"
    code, _ = await status_and_body(
        client, "/stats", headers={"Origin": f"http://{host}", "Host": host}
    )
    assert code == 200


OLD_BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15 Version/15.6"


async def test_a_browser_without_sec_fetch_site_must_come_from_the_page(client: Client) -> None:
    """Browsers before Sec-Fetch-Site send no Origin with a GET: an `<img>` on any site
    could add and remove. Such a browser needs a Referer of the daemon's own pages, except
    for the pages a user opens by typing their address; programs are unaffected."""
    own = f"http://127.0.0.1:{client.port}"
    old = {"User-Agent": OLD_BROWSER, "Host": f"127.0.0.1:{client.port}"}
    for path in ("/add", "/remove", "/stats", "/search", "/thumbnail", "/static/app.js"):
        for headers in (old, {**old, "Referer": "http://attacker.example/"}):
            code, body = await status_and_body(client, path, headers=headers)
            assert (code, body["status"]) == (403, 403), (path, headers)
            assert "Sec-Fetch-Site" in body["error"]
        for allowed in ({"Referer": f"{own}/?token=x"}, {"Referer": own}, {"Origin": own}):
            resp = await client.get(path, headers={**old, **allowed})
            assert resp.status != 403, (path, allowed)
    # a look-alike origin is not the daemon's
    code, _ = await status_and_body(client, "/stats", headers={**old, "Referer": own + ".evil/"})
    assert code == 403
    for page in ("/", "/docs", "/health"):
        assert (await client.get(page, headers=old)).status == 200
    # current browsers say where they come from; programs are not browsers
    for headers in (
        {**old, "Sec-Fetch-Site": "same-origin"},
        {"User-Agent": "curl/8.5.0"},
        {"User-Agent": "python-requests/2.32"},
    ):
        assert (await client.get("/stats", headers=headers)).status == 200
    page = await client.get("/")
    assert page.headers["Referrer-Policy"] == "same-origin"  # what makes the page's own Referer


async def test_allow_host_adds_a_name(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> None:
    cfg = dataclasses.replace(config, allow_hosts=("imgsearch.lan",))
    client = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    code, _ = await status_and_body(client, "/stats", headers={"Host": "imgsearch.lan:8080"})
    assert code == 200
    code, _ = await status_and_body(client, "/stats", headers={"Host": "other.lan"})
    assert code == 403


async def test_token_is_required_except_for_health(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> None:
    cfg = dataclasses.replace(config, token="s3cret")
    client = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    resp = await client.get("/stats")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["status"] == 401
    assert (await status_and_body(client, "/health"))[0] == 200
    bad = {"Authorization": "Bearer nope"}
    assert (await status_and_body(client, "/stats", headers=bad))[0] == 401
    good = {"Authorization": "Bearer s3cret"}
    assert (await status_and_body(client, "/stats", headers=good))[0] == 200
    assert (await status_and_body(client, "/stats", params={"token": "s3cret"}))[0] == 200


async def test_auto_token_is_generated_private_and_kept(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder
) -> None:
    cfg = dataclasses.replace(config, token="auto")
    client = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    token_file = config.data_dir / "token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (await status_and_body(client, "/stats"))[0] == 401
    assert (await status_and_body(client, "/stats", params={"token": token}))[0] == 200
    await client.close()
    again = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    assert (await status_and_body(again, "/stats", params={"token": token}))[0] == 200


def test_public_bind_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        Config(host="0.0.0.0")
    assert Config(host="0.0.0.0", token="x").host == "0.0.0.0"


@pytest.fixture
async def rooted(
    aiohttp_client: ClientFactory, config: Config, tiny_embedder: Embedder, tmp_path: Path
) -> tuple[Client, Path, Path]:
    allowed = tmp_path / "allowed"
    secret = tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    photo("chelsea").save(allowed / "cat.jpg")
    photo("coffee").save(secret / "private.jpg")
    (allowed / "escape.jpg").symlink_to(secret / "private.jpg")
    cfg = dataclasses.replace(config, allow_roots=(allowed,))
    client = await aiohttp_client(create_app(cfg, embedder=tiny_embedder))
    return client, allowed, secret


async def test_paths_outside_the_roots_are_all_the_same_403(
    rooted: tuple[Client, Path, Path],
) -> None:
    client, allowed, secret = rooted
    outside = {
        "existing": secret / "private.jpg",
        "missing": secret / "nothing-here.jpg",
        "unreadable": secret / "locked.jpg",
        "dotdot": Path(f"{allowed}/../secret/private.jpg"),
        "symlink out": allowed / "escape.jpg",
        "proc": Path("/proc/self/environ"),
        "symlink loop": secret / "loop.jpg",
    }
    (secret / "loop.jpg").symlink_to(secret / "loop.jpg")
    (secret / "locked.jpg").write_bytes(b"x")
    os.chmod(secret / "locked.jpg", 0)
    for route in ("/search", "/add", "/remove"):
        answers = set()
        for kind, path in outside.items():
            code, body = await status_and_body(client, route, params={"image": str(path)})
            assert code == 403, (route, kind)
            answers.add((code, body["error"].replace(str(path), "PATH")))
        assert len(answers) == 1, answers  # nothing tells the cases apart
    code, _ = await status_and_body(client, "/search", params={"image": str(allowed / "cat.jpg")})
    assert code == 200
    code, _ = await status_and_body(client, "/search", params={"image": str(allowed / "no.jpg")})
    assert code == 404  # inside the roots a missing file is just missing


async def test_folder_add_skips_links_out_of_the_roots(rooted: tuple[Client, Path, Path]) -> None:
    """A link out of the roots is named as it is inside them: before, the report named the
    file behind it (and every image under a linked folder), which a direct request hides."""
    client, allowed, secret = rooted
    (secret / "deeper").mkdir()
    photo("astronaut").save(secret / "deeper" / "passport.jpg")
    (allowed / "shortcut").symlink_to(secret, target_is_directory=True)
    code, report = await status_and_body(client, "/add", params={"image": str(allowed)})
    assert code == 200
    assert report["added"] == 1 and report["failed"] == 2
    named = {e["image"]: (e["error"], e["status"]) for e in report["errors"]}
    why = ("outside the folders this daemon may read", 403)
    assert named == {str(allowed / "escape.jpg"): why, str(allowed / "shortcut"): why}
    assert str(secret) not in json.dumps(report)


async def test_imported_rows_outside_the_roots_are_refused(
    rooted: tuple[Client, Path, Path],
) -> None:
    """Before: a row naming a file outside the roots was stored, and that file was read later
    (verify re-ranking, evidence, precomputed features)."""
    client, allowed, secret = rooted
    service = client.server.app[SERVICE]
    v = np.ones(service.catalog.dim, np.float32)
    paths = [secret / "private.jpg", allowed / "cat.jpg", Path("/proc/self/environ")]
    rows = [NewImage(FileFacts(str(p), 1, 1, f"sha-{i}", 8, 8), v) for i, p in enumerate(paths)]
    report = service.ingester.add_embedded(rows)
    assert report.added == 1
    assert {(e.image, e.status) for e in report.errors} == {
        (str(paths[0]), 403), (str(paths[2]), 403)
    }  # fmt: skip
    assert service.catalog.store.file_states([str(paths[0])]) == {}


def test_allows_text_matches_allows(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rooted, anywhere = PathPolicy([root]), PathPolicy()
    for path in (root, root / "a.jpg", tmp_path, Path(f"{root}x/a.jpg"), Path("/proc/1/environ"),
                 Path("/dev"), Path("/devices/a.jpg"), Path("/")):  # fmt: skip
        for policy in (rooted, anywhere):
            assert policy.allows_text(str(path)) == policy.allows(path), (policy.roots, path)
    assert PathPolicy([Path("/")]).allows_text("/etc/a.jpg")


def test_features_of_a_file_outside_the_roots_are_not_read(tmp_path: Path) -> None:
    """The second guard: what reads stored files for features checks the roots again."""
    photo("coffee").save(tmp_path / "a.jpg")
    cache = FeatureCache(tmp_path / "features", allows=lambda _: False)
    comparator: Any = SimpleNamespace(name="size", features=lambda picture: picture.rgb.shape)
    with pytest.raises(Forbidden, match="outside the folders"):
        cache.of_file([comparator], 1, tmp_path / "a.jpg", max_file_bytes=10**7, max_pixels=10**8)


def test_files_of_the_kernels_file_systems_are_refused_wherever_they_are() -> None:
    """read_file itself (not the path's name) refuses procfs: a bind mount elsewhere was read."""
    with pytest.raises(Forbidden):
        read_file(Path("/proc/self/status"), 10**6)


async def test_system_folders_are_never_read_even_without_roots(client: Client) -> None:
    for path in ("/proc/self/environ", "/sys/kernel", "/dev/zero", "/dev/../proc/self/maps"):
        code, body = await status_and_body(client, "/search", params={"image": path})
        assert (code, body["status"]) == (403, 403), path


async def test_fifo_and_special_files_are_refused_without_hanging(
    client: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    photo("rocket").save(folder / "ok.jpg")
    code, body = await status_and_body(client, "/add", params={"image": str(folder / "pipe.jpg")})
    assert code == 422 and "not a regular file" in body["error"]
    code, report = await status_and_body(client, "/add", params={"image": str(folder)})
    assert (code, report["added"], report["failed"]) == (200, 1, 1)

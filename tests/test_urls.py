"""Adding and searching by URL, against an image server on 127.0.0.1 (never anything else)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from imgsearch import cli
from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.errors import BadRequest, ConfigError
from imgsearch.fetch import MAX_REDIRECTS, MAX_URL_LENGTH, check_url
from imgsearch.web import create_app
from imgsearch.web.openapi import document

from .helpers import ClientFactory, check_response, free_port, get_json, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]
TIMEOUT_S = 1.5  # the daemon's download timeout in these tests
LIMIT = 2  # its download concurrency
BIG = 3 << 20  # over the 2 MB limit of the `config` fixture
FINISHED = {"done", "failed", "cancelled", "interrupted"}


def png_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    photo(name, 128).save(buf, format="PNG")
    return buf.getvalue()


CAT = jpeg_bytes(photo("chelsea", 160))
COFFEE = png_bytes("coffee")


@dataclasses.dataclass
class Site:
    """The image server: its base URL, and how many requests were in flight at most."""

    base: str
    in_flight: int = 0
    most: int = 0
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __call__(self, path: str) -> str:
        return f"{self.base}{path}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve(body: bytes, ctype: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=ctype)

    return handler


def redirect(to: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(to)

    return handler


def site_app(site: Site) -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(site.release.wait(), TIMEOUT_S * 3)
        return web.Response(body=CAT, content_type="image/jpeg")

    async def counted(request: web.Request) -> web.Response:
        site.in_flight += 1
        site.most = max(site.most, site.in_flight)
        await asyncio.sleep(0.3)
        site.in_flight -= 1
        angle = int(request.match_info["n"]) * 40
        return web.Response(
            body=jpeg_bytes(photo("rocket", 96).rotate(angle)), content_type="image/jpeg"
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the daemon hangs up at its limit
            for _ in range(BIG // 65536):
                await resp.write(b"\xff" * 65536)
        return resp

    app = web.Application()
    app.router.add_get("/cat.jpg", serve(CAT, "image/jpeg"))
    app.router.add_get("/coffee.png", serve(COFFEE, "image/png"))
    app.router.add_get("/octet", serve(COFFEE, "application/octet-stream"))
    app.router.add_get("/garbage.jpg", serve(b"\x00garbage" * 100, "image/jpeg"))
    app.router.add_get("/big.jpg", serve(b"\xff" * BIG, "image/jpeg"))
    app.router.add_get("/page.html", serve(b"<html>hi</html>", "text/html"))
    app.router.add_get("/stream.jpg", stream)
    app.router.add_get("/slow.jpg", slow)
    app.router.add_get("/n/{n}.jpg", counted)
    app.router.add_get("/redirect", redirect("/cat.jpg"))
    app.router.add_get("/loop", redirect("/loop"))

    async def hops(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        raise web.HTTPFound(f"/hops/{left - 1}" if left > 1 else "/cat.jpg")

    app.router.add_get("/hops/{n}", hops)  # n redirects, then the cat
    return app


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    site = Site("")
    server = TestServer(site_app(site), host="127.0.0.1")
    await server.start_server()
    site.base = str(server.make_url("")).rstrip("/")
    yield site
    site.release.set()
    await server.close()


@pytest.fixture
def url_config(config: Config) -> Config:
    return dataclasses.replace(config, download_timeout=TIMEOUT_S, download_concurrency=LIMIT)


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, url_config: Config, tiny_embedder: Embedder
) -> Client:
    return await aiohttp_client(create_app(url_config, embedder=tiny_embedder))


async def call(client: Client, method: str, path: str, status: int, **kw: Any) -> Any:
    """A request whose status is `status` and whose body the OpenAPI document describes."""
    resp = await client.request(method, path, **kw)
    body = await resp.json()
    assert resp.status == status, body
    route = "/jobs/{id}" if path.startswith("/jobs/") else path
    check_response(document(), method, route, status, body)
    return body


def downloads(config: Config) -> list[Path]:
    folder = config.data_dir / "downloads"
    return sorted(folder.iterdir()) if folder.exists() else []


async def test_a_list_of_urls_reports_each_failure_and_keeps_the_rest(
    client: Client, site: Site, url_config: Config
) -> None:
    bad = {
        "/page.html": (422, "text/html"),
        "/missing": (404, "404"),
        "/garbage.jpg": (422, "not a recognised image"),
        "/big.jpg": (413, "limit"),
        "/stream.jpg": (413, "limit"),
        "/slow.jpg": (504, "within 1.5 s"),
        "/loop": (502, "redirects"),
    }
    refused = f"http://127.0.0.1:{free_port()}/x.jpg"
    urls = [site("/cat.jpg"), site("/coffee.png"), *map(site, bad), refused, "ftp://x/y.jpg"]
    report = await call(client, "POST", "/add", 200, json={"urls": urls})
    assert (report["added"], report["skipped"], report["failed"]) == (2, 0, len(bad) + 2)
    errors = {e["image"]: e for e in report["errors"]}
    for path, (status, words) in bad.items():
        assert errors[site(path)]["status"] == status, errors[site(path)]
        assert words in errors[site(path)]["error"]
    assert errors[refused]["status"] == 502 and "cannot connect" in errors[refused]["error"]
    assert errors["ftp://x/y.jpg"]["status"] == 400
    # Stored under content-addressed names, with the format's extension; nothing else left.
    names = {p.name for p in downloads(url_config)}
    assert names == {
        hashlib.sha256(CAT).hexdigest() + ".jpg",
        hashlib.sha256(COFFEE).hexdigest() + ".png",
    }
    assert (
        url_config.data_dir / "downloads" / f"{hashlib.sha256(CAT).hexdigest()}.jpg"
    ).read_bytes() == CAT


async def test_source_is_returned_by_path_and_by_url_searches(
    client: Client, site: Site, url_config: Config
) -> None:
    report = await call(client, "GET", "/add", 200, params={"url": site("/cat.jpg")})
    assert (report["added"], report["failed"]) == (1, 0)
    [stored] = downloads(url_config)
    hits = await call(client, "GET", "/search", 200, params={"image": str(stored)})
    assert hits["results"][0] == {"image": str(stored), "distance": 0.0, "source": site("/cat.jpg")}
    # By URL: downloaded, searched, never stored; the same picture is found at distance ~0.
    for form in ({"params": {"url": site("/redirect")}}, {"json": {"url": site("/cat.jpg")}}):
        method = "GET" if "params" in form else "POST"
        hits = await call(client, method, "/search", 200, **form)
        first = hits["results"][0]
        assert first["image"] == str(stored) and first["source"] == site("/cat.jpg")
        assert first["distance"] == pytest.approx(0.0, abs=1e-4)
    assert downloads(url_config) == [stored]
    assert (await get_json(client, "/stats"))["images"] == 1
    # The same image again, by its URL or another, is a skip.
    for url in (site("/cat.jpg"), site("/redirect")):
        report = await get_json(client, "/add", url=url)
        assert (report["added"], report["skipped"]) == (0, 1)


async def test_one_url_fails_like_one_file(client: Client, site: Site) -> None:
    cases = {
        site("/page.html"): (422, "sent text/html, not an image"),
        site("/missing"): (404, "404"),
        site("/slow.jpg"): (504, "no complete answer"),
        site("/big.jpg"): (413, "over the"),
        site("/garbage.jpg"): (422, "not a recognised image"),
    }
    for url, (status, words) in cases.items():
        body = await call(client, "GET", "/add", status, params={"url": url})
        assert body["error"].startswith(url + ": ") and words in body["error"], body
    for junk in ("", "  ", "ftp://x/y.jpg", "file:///etc/passwd", "/abs/path.jpg", "http://"):
        body = await call(client, "GET", "/add", 400, params={"url": junk})
    body = await get_json(client, "/add", 400, url="http://x/" + "a" * MAX_URL_LENGTH)
    assert "longer than" in body["error"]
    body = await get_json(client, "/add", 400, url=site("/cat.jpg"), image="/tmp")
    assert "not both" in body["error"]


async def test_search_by_url_errors(client: Client, site: Site) -> None:
    for path, status in (("/page.html", 422), ("/missing", 404), ("/slow.jpg", 504)):
        body = await call(client, "GET", "/search", status, params={"url": site(path)})
        assert body["error"].startswith(site(path))
    await call(client, "GET", "/search", 422, params={"url": site("/garbage.jpg")})
    await call(client, "GET", "/search", 413, params={"url": site("/stream.jpg")})
    await call(client, "GET", "/search", 502, params={"url": site("/loop")})
    await call(client, "GET", "/search", 400, params={"url": "gopher://x"})
    await call(client, "GET", "/search", 400, params={"url": site("/cat.jpg"), "text": "a cat"})
    await call(client, "POST", "/search", 400, json={"url": site("/cat.jpg"), "image": "/x"})
    await call(client, "POST", "/search", 400, json={"url": 5})


async def test_csv_uploads(client: Client, site: Site) -> None:
    rows = f'Name,URL\ncat,{site("/cat.jpg")}\n\n,\ncoffee," {site("/coffee.png")} "\nshort\n'
    headers = {"Content-Type": "text/csv"}
    report = await call(client, "POST", "/add", 200, data=rows, headers=headers)
    assert (report["added"], report["failed"]) == (2, 0)
    form = aiohttp.FormData({"update": "1", "wait": "0"})
    form.add_field("csv", f"url\n{site('/octet')}\n", filename="u.csv", content_type="text/csv")
    accepted = await call(client, "POST", "/add", 202, data=form)
    job = await until_finished(client, accepted["job"])
    assert (job["state"], job["updated"], job["kind"], job["image"]) == (
        "done",
        1,
        "urls",
        site("/octet"),
    )
    # The same bytes from another URL with update=1: re-embedded, and the new URL is the source.
    hits = await call(client, "GET", "/search", 200, params={"url": site("/coffee.png")})
    assert hits["results"][0]["source"] == site("/octet")
    for body, words in (
        ("name\nx\n", "'url' column"),
        ("", "'url' column"),
        ("url\n\n", "no URLs"),
    ):
        error = await call(client, "POST", "/add", 400, data=body, headers=headers)
        assert words in error["error"]
    await call(client, "POST", "/add", 400, data=b"url\n\xff\xfe", headers=headers)
    big = "url\n" + "http://127.0.0.1/x.jpg\n" * (BIG // 20)
    await call(client, "POST", "/add", 413, data=io.BytesIO(big.encode()), headers=headers)
    await call(client, "POST", "/add", 400, data=aiohttp.FormData({"x": "1"}))


async def until_finished(client: Client, job_id: str) -> dict[str, Any]:
    for _ in range(500):
        job: dict[str, Any] = await call(client, "GET", f"/jobs/{job_id}", 200)
        if job["state"] in FINISHED:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job never finished: {job}")


async def test_wait_0_jobs_and_cancel(client: Client, site: Site) -> None:
    resp = await client.get("/add", params={"url": site("/cat.jpg"), "wait": "0"})
    body = await resp.json()
    assert resp.status == 202 and resp.headers["Location"] == f"/jobs/{body['job']}"
    job = await until_finished(client, body["job"])
    assert (job["state"], job["added"], job["done"], job["total"]) == ("done", 1, 1, 1)
    assert (job["kind"], job["image"]) == ("urls", site("/cat.jpg"))
    # A URL that fails fails its one-URL job, with the URL's status.
    body = await call(client, "POST", "/jobs", 202, json={"url": site("/page.html")})
    job = await until_finished(client, body["job"])
    assert job["state"] == "failed" and "text/html" in job["error"]
    # Cancelling does not wait for downloads in flight to time out.
    urls = [site(f"/slow.jpg?{i}") for i in range(4)] + [site("/slow.jpg?0")]
    body = await call(client, "POST", "/add", 202, json={"urls": urls, "wait": 0})
    assert (await get_json(client, f"/jobs/{body['job']}"))["image"] == "4 URLs"
    await asyncio.sleep(0.3)
    start = asyncio.get_running_loop().time()
    job = await call(client, "DELETE", f"/jobs/{body['job']}", 200)
    assert job["state"] == "cancelled" and job["total"] == 4
    assert asyncio.get_running_loop().time() - start < TIMEOUT_S


async def test_downloads_never_exceed_the_concurrency_limit(client: Client, site: Site) -> None:
    urls = [site(f"/n/{i}.jpg") for i in range(7)]
    report = await get_json(client, "/add", url=urls)
    assert report["added"] == 7
    assert site.most == LIMIT


def test_check_url() -> None:
    assert check_url("  http://127.0.0.1:8/a.jpg ") == "http://127.0.0.1:8/a.jpg"
    assert check_url("HTTPS://Example.org/x?y=1#z") == "HTTPS://Example.org/x?y=1#z"
    bad_urls = (None, 5, "", "a.jpg", "//x/a.jpg", "data:image/png;base64,AA", "http://[::1")
    for bad in (*bad_urls, "http://h:99999/", "http://h/\r\nX: y", "http://\x00/"):
        with pytest.raises(BadRequest):
            check_url(bad)


def test_config_fields_from_environment_and_flags() -> None:
    env = {"IMGSEARCH_DOWNLOAD_TIMEOUT": "2.5", "IMGSEARCH_DOWNLOAD_CONCURRENCY": "3"}
    c = Config.load(environ=env)
    assert (c.download_timeout, c.download_concurrency) == (2.5, 3)
    ns = cli.build_parser().parse_args(
        ["serve", "--download-timeout", "9", "--download-concurrency", "1"]
    )
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    c = Config.load(environ=env, overrides=args)
    assert (c.download_timeout, c.download_concurrency) == (9.0, 1)
    for bad in (
        {"IMGSEARCH_DOWNLOAD_TIMEOUT": "0"},
        {"IMGSEARCH_DOWNLOAD_TIMEOUT": "nan"},
        {"IMGSEARCH_DOWNLOAD_CONCURRENCY": "0"},
    ):
        with pytest.raises(ConfigError, match="--download-"):
            Config.load(environ=bad)


async def test_command_line_add_and_search_by_url(
    client: Client,
    site: Site,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGSEARCH_URL", str(client.make_url("")).rstrip("/"))
    monkeypatch.delenv("IMGSEARCH_TOKEN", raising=False)

    async def run(*argv: str) -> tuple[Any, str]:
        def main() -> Any:
            with pytest.raises(SystemExit) as exc:
                cli.main(list(argv))
            return exc.value.code

        code = await asyncio.to_thread(main)
        return code, capsys.readouterr().out

    code, out = await run("add", site("/cat.jpg"))
    assert code == 0 and out.startswith("added 1, updated 0, skipped 0, failed 0"), out
    table = tmp_path / "urls.csv"
    table.write_text(f"url\n{site('/coffee.png')}\n{site('/page.html')}\n")
    code, out = await run("add", "--csv", str(table))
    assert code == 0 and "added 1" in out and f"{site('/page.html')}: the server sent" in out
    code, out = await run("search", site("/redirect"), "--limit", "1")
    assert code == 0 and f"<- {site('/cat.jpg')}" in out, out
    code, out = await run("add", site("/missing"))
    assert code == 1


async def test_url_jobs_survive_a_restart(
    aiohttp_client: ClientFactory, url_config: Config, tiny_embedder: Embedder, site: Site
) -> None:
    first = await aiohttp_client(create_app(url_config, embedder=tiny_embedder))
    await call(first, "POST", "/add", 200, json={"urls": [site("/cat.jpg"), site("/missing")]})
    await call(first, "GET", "/add", 422, params={"url": site("/page.html")})
    await first.close()
    second = await aiohttp_client(create_app(url_config, embedder=tiny_embedder))
    jobs = (await call(second, "GET", "/jobs", 200))["jobs"]
    assert [(j["kind"], j["image"], j["state"]) for j in jobs] == [
        ("urls", site("/page.html"), "failed"),
        ("urls", "2 URLs", "done"),
    ]
    assert jobs[1]["errors"] == [
        {"image": site("/missing"), "error": "the server answered 404 Not Found", "status": 404}
    ]


async def test_redirects_up_to_the_limit_are_followed(client: Client, site: Site) -> None:
    """At most MAX_REDIRECTS (5) redirects, as the README says: the fifth was refused."""
    most, over = site(f"/hops/{MAX_REDIRECTS}"), site(f"/hops/{MAX_REDIRECTS + 1}")
    assert (await call(client, "GET", "/add", 200, params={"url": most}))["added"] == 1
    body = await call(client, "GET", "/add", 502, params={"url": over})
    assert f"more than {MAX_REDIRECTS} redirects" in body["error"]


async def test_the_same_url_spelled_with_spaces_is_one_download(client: Client, site: Site) -> None:
    url = site("/cat.jpg")
    report = await call(client, "POST", "/add", 200, json={"urls": [url, f" {url}", f"{url}\n"]})
    assert (report["added"], report["skipped"], report["failed"]) == (1, 0, 0)


async def test_a_cancelled_add_leaves_no_download_it_did_not_index(
    client: Client, site: Site, url_config: Config
) -> None:
    """A download that arrived and waited for its batch when the add was cancelled was left
    in downloads/ for good, no image holding it."""
    urls = [site("/coffee.png")] + [site(f"/slow.jpg?{i}") for i in range(3)]
    body = await call(client, "POST", "/add", 202, json={"urls": urls, "wait": 0})
    for _ in range(100):  # the coffee arrives, the slow ones hold its batch back
        if downloads(url_config):
            break
        await asyncio.sleep(0.05)
    assert len(downloads(url_config)) == 1
    job = await call(client, "DELETE", f"/jobs/{body['job']}", 200)
    assert job["state"] == "cancelled" and job["added"] == 0
    assert downloads(url_config) == []
    # one indexed stays: the same bytes again, then an add stopped before its batch
    await call(client, "GET", "/add", 200, params={"url": site("/coffee.png")})
    body = await call(client, "POST", "/add", 202, json={"urls": urls, "wait": 0})
    await asyncio.sleep(0.5)
    await call(client, "DELETE", f"/jobs/{body['job']}", 200)
    assert len(downloads(url_config)) == 1


async def test_downloads_no_image_holds_are_deleted_at_the_next_start(
    aiohttp_client: ClientFactory, url_config: Config, tiny_embedder: Embedder, site: Site
) -> None:
    """Downloads of images removed since, or that a kill -9 left unindexed or half written."""
    first = await aiohttp_client(create_app(url_config, embedder=tiny_embedder))
    urls = [site("/cat.jpg"), site("/coffee.png")]
    await call(first, "POST", "/add", 200, json={"urls": urls})
    cat, coffee = sorted(downloads(url_config), key=lambda p: p.suffix)  # .jpg, .png
    await call(first, "GET", "/remove", 200, params={"image": str(coffee)})
    await first.close()
    orphan = url_config.data_dir / "downloads" / ("0" * 64 + ".jpg")
    orphan.write_bytes(CAT)
    half = url_config.data_dir / "downloads" / ".tmp-x1y2.jpg"
    half.write_bytes(CAT[:100])
    hour_ago = time.time() - 3600
    for path in (cat, coffee, orphan, half):
        os.utime(path, (hour_ago, hour_ago))
    second = await aiohttp_client(create_app(url_config, embedder=tiny_embedder))
    for _ in range(1200):  # (the sweep runs on idle CPU)
        if downloads(url_config) == [cat]:
            break
        await asyncio.sleep(0.05)
    assert downloads(url_config) == [cat]
    hits = (await call(second, "GET", "/search", 200, params={"image": str(cat)}))["results"]
    assert hits[0]["image"] == str(cat)
    await second.close()
    # A data dir moved elsewhere: its rows still name the old folder; the downloads are kept.
    moved = dataclasses.replace(url_config, data_dir=url_config.data_dir.parent / "moved")
    url_config.data_dir.rename(moved.data_dir)
    orphan = moved.data_dir / "downloads" / orphan.name
    orphan.write_bytes(CAT)
    os.utime(orphan, (hour_ago, hour_ago))
    third = await aiohttp_client(create_app(moved, embedder=tiny_embedder))
    for _ in range(1200):
        if not orphan.exists():
            break
        await asyncio.sleep(0.05)
    assert downloads(moved) == [moved.data_dir / "downloads" / cat.name]
    assert (await call(third, "GET", "/stats", 200))["images"] == 1


def test_the_sweep_looks_again_before_each_deletion(tmp_path: Path) -> None:
    """An add may store (or save again) the same bytes while the start's sweep runs: the
    sweep's earlier look at the store, or at the file, no longer holds."""
    import threading

    from imgsearch.downloads import sweep
    from imgsearch.fetch import Downloader

    folder = tmp_path / "downloads"
    folder.mkdir()
    hour_ago = time.time() - 3600
    names = {}
    files = (
        ("stored meanwhile", CAT, ".jpg"),
        ("saved again", COFFEE, ".png"),
        ("orphan", b"x", ""),
    )
    for label, data, ext in files:
        path = folder / f"{hashlib.sha256(data).hexdigest()}{ext}"
        path.write_bytes(data)
        os.utime(path, (hour_ago, hour_ago))
        names[label] = path
    looks: list[list[str]] = []
    stored = hashlib.sha256(CAT).hexdigest()
    downloader = Downloader(timeout=1, concurrency=1, max_bytes=BIG, max_pixels=10**8)
    saved = downloader.note_saves()
    before = names["saved again"].stat()

    def known(digests: Sequence[str]) -> set[str]:
        looks.append(list(digests))
        if len(looks) == 1:  # the chunk's look: nothing held; then an add stores the cat
            assert downloader.save(COFFEE, folder) == names["saved again"]
            return set()
        return {stored} & set(digests)

    assert sweep(folder, known, time.time(), threading.Event(), saved) == 1
    downloader.stop_noting()
    assert not names["orphan"].exists()
    assert names["stored meanwhile"].exists() and names["saved again"].exists()
    # Saved again, the file is as it was: its times key the image's caches (thumbnail,
    # verify features), which a new ctime would all have made stale.
    after = names["saved again"].stat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)

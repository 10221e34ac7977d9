"""The OpenAPI document: valid, in step with the app's routes, true of real responses, fuzzed."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import ValidationError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from PIL import Image

from imgsearch.config import Config
from imgsearch.embedders import Embedder
from imgsearch.web import create_app
from imgsearch.web.openapi import document

from .helpers import ClientFactory, Daemon, check_response, jpeg_bytes, photo

Client = TestClient[web.Request, web.Application]
METHODS = ("get", "post", "put", "patch", "delete")
DOC_URI = "urn:imgsearch:openapi"
SCHEMATHESIS_CONFIG = Path(__file__).parent / "schemathesis.toml"
CLI_MAX_EXAMPLES = 25  # per operation and phase: ~1,500 requests, about a minute on 2 cores
CLI_TIMEOUT_S = 600


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in doc["paths"].items() for m in METHODS if m in item}


def test_document_is_valid_openapi_3() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.")
    validate_spec(doc)
    # The checker used below does catch a body that strays from the schema.
    with pytest.raises(ValidationError):
        check_response(doc, "GET", "/stats", 200, {"images": 1})
    with pytest.raises(ValidationError):
        check_response(doc, "GET", "/search", 200, {"results": [{"image": "/a", "distance": None}]})


def test_every_route_is_documented_and_every_documented_route_exists(config: Config) -> None:
    app = create_app(config)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in {"HEAD", "*"}
        and route.resource is not None
        and not isinstance(route.resource, web.StaticResource)
    }
    assert routed == _documented(document())


async def test_document_names_this_server_and_docs_page_is_self_contained(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["servers"] == [
        {"url": str(client.make_url("")).rstrip("/"), "description": "this daemon"}
    ]
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert 'fetch("openapi.json"' in page
    # Nothing from elsewhere: no absolute URLs in src/href, no CSS imports or url().
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


async def test_real_responses_match_the_document(
    client: Client, photos: dict[str, Path], tmp_path: Path
) -> None:
    doc = document()
    folder = str(next(iter(photos.values())).parent)
    cat = str(photos["chelsea"])
    jpeg = jpeg_bytes(photo("chelsea", 96))

    async def call(method: str, path: str, status: int, route: str = "", **kw: Any) -> Any:
        resp = await client.request(method, path, **kw)
        body = await resp.json()
        assert resp.status == status, body
        check_response(doc, method, route or path, status, body)
        return body

    await call("GET", "/health", 200)
    await call("GET", "/add", 200, params={"image": folder})
    await call("GET", "/stats", 200)
    await call("GET", "/comparators", 200)
    await call("POST", "/add", 200, json={"image": cat, "update": True})
    hits = await call(
        "GET", "/search", 200, params=[("image", cat), ("compare", "verify"), ("compare", "sift")]
    )
    assert {"score", "rank_before", "compare", "verdict"} <= set(hits["results"][0])
    await call("GET", "/search", 200, params={"text": "a cat", "limit": 2})
    form = aiohttp.FormData({"limit": "2"})
    form.add_field("image", jpeg, filename="q.jpg", content_type="image/jpeg")
    await call("POST", "/search", 200, data=form)
    await call("POST", "/search", 200, data=jpeg, headers={"Content-Type": "image/jpeg"})
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    await call("POST", "/search", 200, json={"image": uri, "compare": ["histogram"]})
    job = await call("POST", "/jobs", 202, json={"image": folder})
    await call("GET", "/add", 202, params={"image": cat, "wait": "0"})
    await call("GET", "/jobs", 200)
    await call("GET", f"/jobs/{job['job']}", 200, route="/jobs/{id}")
    await call("POST", f"/jobs/{job['job']}/cancel", 200, route="/jobs/{id}/cancel")
    await call("DELETE", f"/jobs/{job['job']}", 200, route="/jobs/{id}")
    await call("GET", f"/jobs/{job['job']}", 404, route="/jobs/{id}")
    # A stored file that vanished (no cached ssim features): the hit has `error`, no scores.
    photos["coffee"].unlink()
    hits = await call("GET", "/search", 200, params={"image": cat, "compare": "ssim"})
    assert any("error" in h for h in hits["results"])
    await call("GET", "/remove", 200, params={"image": folder})
    # Errors.
    await call("GET", "/search", 400, params={"image": cat, "limit": "abc"})
    await call("GET", "/add", 400, params={"image": "relative.jpg"})
    await call("GET", "/remove", 400)
    await call("GET", "/add", 404, params={"image": str(tmp_path / "nope.jpg")})
    await call("GET", "/jobs/nope", 404, route="/jobs/{id}")
    await call("DELETE", "/jobs/nope", 404, route="/jobs/{id}")
    await call("POST", "/jobs/nope/cancel", 404, route="/jobs/{id}/cancel")
    await call("POST", "/search", 422, data=b"not an image", headers={"Content-Type": "image/png"})
    big = io.BytesIO(b"x" * (3 << 20))
    await call("POST", "/search", 413, data=big, headers={"Content-Type": "image/png"})
    await call("GET", "/stats", 403, headers={"Origin": "http://evil.example"})


def test_every_body_taking_operation_documents_what_reading_a_body_answers() -> None:
    """web/bodies.py reads every body under a gate (503 when 8 are being read) with an idle
    timer (408 after 30 s of nothing), within the app's size limit (413); before, /import,
    /export and /metadata left some out, and no operation had 408."""
    doc = document()
    missing = {
        f"{method.upper()} {path}": sorted({"408", "413", "503"} - set(op["responses"]))
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS and "requestBody" in op
    }
    assert len(missing) >= 6 and {k: v for k, v in missing.items() if v} == {}


def test_bulk_posts_document_wait_in_the_query() -> None:
    """POST /import and /export honour ?wait=1 (README); before, their parameters were []."""
    doc = document()
    for path in ("/import", "/export"):
        params = doc["paths"][path]["post"]["parameters"]
        names = [
            doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"]
            if "$ref" in p
            else p["name"]
            for p in params
        ]
        assert names == ["wait"], path


async def test_reading_a_body_answers_as_documented(
    aiohttp_client: ClientFactory,
    config: Config,
    tiny_embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A body over the limit (413), one past the gate (503), one that stalls (408), on the bulk
    routes and /metadata; and ?wait=1 on POST /export, and /stats' embedding fields, are the
    document's."""
    from imgsearch.web import bodies
    from imgsearch.web.gate import Gate

    doc = document()
    monkeypatch.setattr(bodies, "BODY_IDLE_S", 0.5)
    app = create_app(config, embedder=tiny_embedder)
    app[bodies.BODY_GATE] = Gate("upload", 1, retry_after=1)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /import HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.1)  # its handler is reading: the gate's one place is taken
    crowded = json.dumps({"dir": str(tmp_path), "pad": "x" * bodies.GATED_FROM})
    for path in ("/export", "/metadata"):
        resp = await client.post(path, data=crowded, headers={"Content-Type": "application/json"})
        check_response(doc, "POST", path, 503, await resp.json())
        assert resp.status == 503
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    check_response(doc, "POST", "/import", 408, json.loads(body))
    huge = json.dumps({"dir": str(tmp_path), "pad": "x" * (3 << 20)}).encode()
    for path in ("/import", "/export"):
        data = io.BytesIO(huge)  # (raw bytes this big: a ResourceWarning from aiohttp)
        resp = await client.post(path, data=data, headers={"Content-Type": "application/json"})
        check_response(doc, "POST", path, 413, await resp.json())
        assert resp.status == 413
    resp = await client.post("/export", params={"wait": "1"}, json={"dir": str(tmp_path / "x")})
    job = await resp.json()
    assert resp.status == 200 and job["state"] == "done"  # waited, as the query asked
    check_response(doc, "POST", "/export", 200, job)
    resp = await client.get("/stats")
    embedding = (await resp.json())["embedding"]
    documented = doc["components"]["schemas"]["Stats"]["properties"]["embedding"]["properties"]
    assert "precision_checking" in embedding and set(embedding) <= set(documented)


async def test_errors_outside_the_routes_have_the_documented_shape(client: Client) -> None:
    doc = document()
    schema = doc["components"]["schemas"]["Error"]
    for method, path, status in (("DELETE", "/stats", 405), ("GET", "/nowhere", 404)):
        resp = await client.request(method, path)
        assert resp.status == status
        OAS30Validator(schema).validate(await resp.json())


async def test_a_one_pixel_query_with_compare_is_not_a_500(
    client: Client, photos: dict[str, Path]
) -> None:
    await client.get("/add", params={"image": str(photos["chelsea"])})
    dot = jpeg_bytes(Image.new("RGB", (1, 1), "red"))
    resp = await client.post(
        "/search", params={"compare": "histogram"}, data=dot, headers={"Content-Type": "image/jpeg"}
    )
    assert resp.status == 200, await resp.text()


async def test_a_malformed_multipart_part_header_is_a_400(client: Client) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="a\x01b"\r\n\r\nx\r\n--b--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    resp = await client.post("/search", data=body, headers=headers)
    assert resp.status == 400, await resp.text()


async def test_a_path_of_an_unknown_user_is_not_a_500(client: Client) -> None:
    for path in ("/search", "/add", "/remove"):
        resp = await client.get(path, params={"image": "~nosuchuser-imgsearch/x.jpg"})
        assert resp.status < 500, await resp.text()


# -- schemathesis against a real daemon ------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, tiny_model_config: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon that may read only a temp folder, with a few images indexed; and one image."""
    root = tmp_path / "root"
    (root / "pics").mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket"):
        photo(name, 96).save(root / "pics" / f"{name}.jpg")
    d = Daemon(tmp_path / "data", tiny_model_config, "--allow-root", str(root))
    try:
        d.wait_ready()
        assert d.get("/add", image=str(root / "pics"))["added"] == 3
        yield d, root / "pics" / "chelsea.jpg"
    finally:
        d.proc.kill()
        d.proc.wait()


def _real_paths(image: Path) -> str:
    """Config lines that make half the generated `image`/`dir`/`folder` values real paths."""
    paths = json.dumps([str(image), str(image.parent), str(image.parent.parent)])
    lines = ["", "[dictionaries.paths]", f"values = {paths}", "", "[parameters]"]
    for name in ("image", "dir", "folder"):
        lines.append(f'"query.{name}" = {{ dictionary = "paths", probability = 0.5 }}')
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_schemathesis_run_with_every_check_finds_nothing(
    daemon: tuple[Daemon, Path], tmp_path: Path
) -> None:
    """`schemathesis run --checks all` (every phase: examples, coverage, fuzzing, stateful)
    against the real daemon: the document says exactly what the server accepts and answers."""
    server, image = daemon
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.read_text() + _real_paths(image))
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config)]
    command += ["run", f"{server.url}/openapi.json", "--checks", "all"]
    command += ["--max-examples", str(CLI_MAX_EXAMPLES), "--workers", "1", "--no-color"]
    command += ["--generation-deterministic", "--request-timeout", "60"]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12000:] + "\n\n" + server.output()[-3000:]
    cases = re.search(r"Test cases:\s+(\d+) generated, (\d+) passed\s", report)
    assert cases is not None and cases[1] == cases[2] and int(cases[1]) > 500, report[-4000:]
    assert re.search(r"Dictionaries:\s+1 dictionary / 3 entries", report), report[:2000]
    operations = re.search(r"Operations:\s+(\d+) selected / (\d+) total", report)
    assert operations is not None and operations[1] == operations[2], report[:2000]
    # Schemathesis leaves out the operation that serves the document it loaded.
    tested = _documented(document()) - {("GET", "/openapi.json")}
    assert int(operations[1]) == len(tested), report[:2000]

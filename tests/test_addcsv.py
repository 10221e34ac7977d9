"""CSV adds: a row whose metadata is refused, the header's names, the count of rows."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from imgsearch.config import Config
from imgsearch.metadata import MAX_BYTES
from imgsearch.web.parsing import MAX_URLS

from .helpers import get_json, jpeg_bytes, photo, serving, web_site

Client = TestClient[web.Request, web.Application]
CSV = {"Content-Type": "text/csv"}
CSV_FIELD_LIMIT = 128 * 1024  # the csv module's default


async def _add(client: Client, text: str, status: int = 200) -> Any:
    resp = await client.post("/add", data=text.encode(), headers=CSV)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _metadata(client: Client, path: Path | str) -> Any:
    return (await get_json(client, "/image", image=str(path)))["metadata"]


async def test_a_row_with_refused_metadata_is_added_without_it(
    client: Client, photos: dict[str, Path]
) -> None:
    cat, cup, rocket, camera = (photos[n] for n in ("chelsea", "coffee", "rocket", "camera"))
    await client.post("/add", json={"image": str(rocket), "metadata": {"sku": "R-1"}})
    long, huge = "x" * (MAX_BYTES + 1), "y" * (CSV_FIELD_LIMIT + 10)
    rows = [
        "path,note",
        f'{cat},"two\nlines"',  # lines 2 and 3
        f"{cup},{long}",  # line 4
        f"{rocket},{huge}",  # line 5: a cell the csv module refuses by default
        f"{camera},fine",
    ]
    report = await _add(client, "\n".join(rows) + "\n")
    assert (report["added"], report["skipped"], report["failed"]) == (3, 1, 0)
    assert [(e["image"], e["status"]) for e in report["errors"]] == [
        (str(cup), 413),
        (str(rocket), 413),
    ]
    line4, line5 = (e["error"] for e in report["errors"])
    assert line4.startswith("line 4: added without its metadata: metadata is")
    assert line5.startswith("line 5: added without its metadata: metadata is")
    assert await _metadata(client, cat) == {"note": "two\nlines"}
    assert await _metadata(client, cup) == {}
    assert await _metadata(client, rocket) == {"sku": "R-1"}  # as it was
    assert await _metadata(client, camera) == {"note": "fine"}
    assert csv.field_size_limit() > CSV_FIELD_LIMIT  # raised by the add, never lowered


async def test_a_url_row_with_refused_metadata_is_added_without_it(
    client: Client, config: Config
) -> None:
    cat, cup = jpeg_bytes(photo("chelsea", 160)), jpeg_bytes(photo("coffee", 160))

    async with web_site({"/cat.jpg": serving(cat), "/cup.jpg": serving(cup)}) as base:
        rows = f"url,note\n{base}/cat.jpg,ok\n{base}/cup.jpg,{'x' * (CSV_FIELD_LIMIT + 1)}\n"
        report = await _add(client, rows)
    assert (report["added"], report["failed"]) == (2, 0)
    [error] = report["errors"]
    assert error["image"] == f"{base}/cup.jpg" and error["status"] == 413
    assert error["error"].startswith("line 3: added without its metadata:")
    downloads = config.data_dir / "downloads"
    stored = {data: downloads / f"{hashlib.sha256(data).hexdigest()}.jpg" for data in (cat, cup)}
    assert await _metadata(client, stored[cat]) == {"note": "ok"}
    assert await _metadata(client, stored[cup]) == {}


async def test_a_header_naming_a_column_twice_is_refused(
    client: Client, photos: dict[str, Path]
) -> None:
    cat = photos["chelsea"]
    for header in ("path,tag,tag", "path,tag, tag ", "url,tag,tag", "path,path"):
        error = await _add(client, f"{header}\n{cat},a,b\n", 400)
        name = header.rsplit(",", 1)[1].strip()
        assert error["error"] == f"the CSV header names the column {name!r} more than once"
    error = await _add(client, f"path,price:usd\n{cat},3\n", 400)  # no key: the add, not a row
    assert "has a ':'" in error["error"]
    assert (await get_json(client, "/jobs"))["jobs"] == []  # nothing was queued


async def test_a_csv_of_paths_is_counted_in_paths(
    client: Client, photos: dict[str, Path], tmp_path: Path
) -> None:
    error = await _add(client, "path,sku\n", 400)
    assert error["error"] == "no paths given"
    rows = "".join(f"{tmp_path}/nope{i}.jpg,S{i}\n" for i in range(MAX_URLS))
    error = await _add(client, f"path,sku\n{photos['coffee']},C\n{rows}", 400)
    assert error["error"] == f"{MAX_URLS + 1} paths in one add; at most {MAX_URLS}"
    error = await _add(client, "url,sku\n", 400)
    assert error["error"] == "no URLs given"

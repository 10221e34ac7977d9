"""What the command-line client prints: plain-text tables and summaries of the daemon's JSON.

Every text that comes from outside (a path, a daemon's message) goes through `shown` before it
reaches the terminal; --json output is the daemon's JSON as is and never does."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# What a terminal acts on or a table would break on, in a file name or a message: C0 and C1
# control characters (ESC and BEL make the sequences that retitle, clear or recolour it; a
# newline forges a row), DEL, the Unicode line and paragraph separators, the bidirectional
# overrides and isolates (they reorder the rest of a line as shown), and lone surrogates (a
# name's bytes that are not UTF-8, as Python decodes them; printed raw they crash the print).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(value: Any) -> str:
    """`str(value)` safe to print: each character in _UNSAFE as a visible escape (`\\x1b`, `\\n`).

    A backslash is left as it is: the text stays readable and shown(shown(x)) == shown(x);
    --json gives the exact text where an escape and a backslash in a name could be confused."""
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_results(results: Sequence[Mapping[str, Any]]) -> str:
    """Search hits as a table: rank, distance, score and verdict when compared, path."""
    if not results:
        return "no results"
    scored = any("score" in r for r in results)
    header = ["#", "distance", *(["score", "verdict"] if scored else []), "image"]
    rows = []
    for rank, hit in enumerate(results, 1):
        row = [str(rank), _num(hit.get("distance"))]
        if scored:
            row += [_num(hit.get("score")), str(hit.get("verdict") or "-")]
        error = f"  (error: {hit['error']})" if hit.get("error") else ""
        source = f"  <- {hit['source']}" if hit.get("source") else ""
        rows.append([*row, f"{hit.get('image')}{source}{error}"])
    return table(header, rows, right=frozenset({0, 1, 2}))


def format_jobs(listing: Sequence[Mapping[str, Any]]) -> str:
    """Jobs as a table: id, state, done/total, images/s, path."""
    if not listing:
        return "no jobs"
    rows = [
        [str(j.get("id")), str(j.get("state")), _progress(j), _num(j.get("images_per_s"), 1)]
        + [str(j.get("image"))]
        for j in listing
    ]
    return table(["id", "state", "done/total", "images/s", "image"], rows, frozenset({2, 3}))


def format_job(job: Mapping[str, Any]) -> str:
    """One job as key: value lines, then its failed files."""
    pairs: list[tuple[str, Any]] = [(k, job.get(k)) for k in ("id", "state", "image", "update")]
    pairs.append(("progress", _progress(job)))
    pairs += [(k, job.get(k)) for k in ("added", "updated", "skipped", "failed")]
    eta = "-" if job.get("eta_s") is None else f"{job['eta_s']:.0f} s"
    pairs += [("images/s", _num(job.get("images_per_s"), 1)), ("eta", eta)]
    pairs += [(k, _time(job.get(k))) for k in ("created", "started", "finished")]
    pairs.append(("error", job.get("error") or "-"))
    failures = failure_lines(job)
    lines = [f"{key}: {shown(value)}" for key, value in pairs]
    return "\n".join(lines + (["errors:", *failures] if failures else []))


def format_bulk_job(job: Mapping[str, Any]) -> str:
    """An import or an export (`imgsearch jobs ID`) as key: value lines, then an import's bad
    rows."""
    importing = job.get("kind") == "import"
    pairs: list[tuple[str, Any]] = [(k, job.get(k)) for k in ("id", "kind", "state", "dir")]
    pairs += [("path_map", ", ".join(job.get("path_map") or []) or "-")] if importing else []
    pairs.append(("progress", _progress(job)))
    counts = ("imported", "skipped", "failed") if importing else ("files",)
    pairs += [(k, job.get(k)) for k in counts]
    rate = job.get("vectors_per_s" if importing else "rows_per_s")
    eta = "-" if job.get("eta_s") is None else f"{job['eta_s']:.0f} s"
    pairs += [("vectors/s" if importing else "rows/s", _num(rate, 1)), ("eta", eta)]
    pairs += [(k, _time(job.get(k))) for k in ("created", "started", "finished")]
    pairs.append(("error", job.get("error") or "-"))
    bad = bad_row_lines(job) if importing else []
    lines = [f"{key}: {shown(value)}" for key, value in pairs]
    return "\n".join(lines + (["errors:", *bad] if bad else []))


def format_import(job: Mapping[str, Any]) -> str:
    """A followed import's summary: its state and counts, then its bad rows."""
    lines = [shown(f"{k}: {job.get(k)}") for k in ("state", "imported", "skipped", "failed")]
    return "\n".join(lines + bad_row_lines(job))


def bad_row_lines(job: Mapping[str, Any]) -> list[str]:
    """A line per row an import listed with its reason; it lists only the first ones."""
    errors = job.get("errors") or []
    lines = [shown(f"  {e.get('file')} row {e.get('row')}: {e.get('error')}") for e in errors]
    more = int(job.get("failed") or 0) - len(errors)
    # (The daemon logs only a few of each batch's: no "see the log" as for an add's files.)
    return lines + ([f"  ... and {more} more"] if more > 0 else [])


def format_duplicates(body: Mapping[str, Any]) -> str:
    """One block per cluster (near ones as a table: distance to the first image, verify's
    verdict on the pair, the image it was paired with), then a summary line."""
    blocks = []
    for cluster in body.get("clusters", []):
        images = cluster.get("images", [])
        head = f"{shown(cluster.get('kind'))}: {len(images)} images"
        if cluster.get("kind") != "near":
            blocks.append("\n".join([head, *(f"  {_image(i)}" for i in images)]))
            continue
        rows = [
            [str(n), _num(i.get("distance")), str(i.get("verdict") or "-")]
            + [str(i["match"] + 1) if isinstance(i.get("match"), int) else "-", _image(i)]
            for n, i in enumerate(images, 1)
        ]
        header = ["#", "distance", "verdict", "match", "image"]
        lines = table(header, rows, right=frozenset({0, 1, 3})).splitlines()
        blocks.append("\n".join([head, *(f"  {line}" for line in lines)]))
    kinds = [c.get("kind") for c in body.get("clusters", [])]
    found = (
        f"{len(kinds)} clusters ({kinds.count('identical')} identical, {kinds.count('near')} near)"
        if kinds
        else "no duplicates"
    )
    how = "verified" if body.get("verified") else "not verified: no verify comparator"
    summary = shown(
        f"{found} among {body.get('images', 0)} images (threshold {body.get('threshold')}, {how})"
    )
    return "\n\n".join([*blocks, summary])


def _image(entry: Mapping[str, Any]) -> str:
    copies = f"  (+{entry['copies']} identical)" if entry.get("copies") else ""
    source = f"  <{entry['source']}>" if entry.get("source") else ""
    return shown(f"{entry.get('image')}{copies}{source}")


def failure_lines(job: Mapping[str, Any]) -> list[str]:
    """A line per failed file with its reason; the daemon lists only the first few."""
    errors = job.get("errors") or []
    lines = [f"  {shown(e.get('image'))}: {shown(e.get('error'))}" for e in errors]
    more = int(job.get("failed") or 0) - len(errors)
    return lines + ([f"  ... and {more} more (see the daemon's log)"] if more > 0 else [])


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> str:
    """Columns padded to their widest cell (`right`: right-aligned ones); the last is not padded.
    Every cell is `shown`: a cell is one line of one column whatever the daemon sent."""
    header, rows = [shown(c) for c in header], [[shown(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def key_values(body: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`key: value` lines, nested objects' keys joined with dots (`index.origin: ...`)."""
    lines: list[str] = []
    for key, value in body.items():
        if isinstance(value, Mapping):
            lines += key_values(value, f"{prefix}{key}.")
        else:
            lines.append(shown(f"{prefix}{key}: {value}"))
    return lines


def _progress(job: Mapping[str, Any]) -> str:
    total = job.get("total")
    return f"{job.get('done', 0)}/{'?' if total is None else total}"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _time(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")


def format_watches(watches: Sequence[Mapping[str, Any]]) -> str:
    """A line per watched folder: its state and what it has done."""
    if not watches:
        return "no watched folders"
    rows = [
        [
            str(w.get("state")),
            *(str(w.get(k, 0)) for k in ("added", "moved", "removed", "missing", "restored")),
            str(w.get("dir")),
        ]
        for w in watches
    ]
    head = ["state", "added", "moved", "removed", "missing", "restored", "folder"]
    return table(head, rows)

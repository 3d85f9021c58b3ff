"""Handlers of the log-report example.

``parse_file`` rejects a malformed file with ``BadLogFile``, listed in ``fatal_errors``: it is
dead-lettered at once with its error instead of being retried. ``lookup_regions`` stands for a
call to a flaky service: it fails the first attempt of some chunks, which the retry policy
absorbs. ``record_chunk`` is idempotent (it writes one file per chunk, named by the job id), so
running a job twice — which at-least-once execution allows — cannot count a chunk twice.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import rrq_flow

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
COLUMNS = ["timestamp", "ip", "method", "path", "status", "bytes", "duration_ms"]
CHUNK = 100


class BadLogFile(Exception):
    """The file is not an access log in the expected CSV format."""


def parse_file(path: str) -> list[dict[str, Any]]:
    """Read one CSV access log; return its rows in chunks (each chunk becomes a ``geo`` job)."""
    with (HERE / path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise BadLogFile(f"{path}: header is {reader.fieldnames}, expected {COLUMNS}")
        rows = [
            {
                "ip": r["ip"],
                "path": r["path"],
                "status": int(r["status"]),
                "bytes": int(r["bytes"]),
                "ms": int(r["duration_ms"]),
            }
            for r in reader
        ]
    chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    return [{"file": path, "chunk": n, "rows": rows} for n, rows in enumerate(chunks)]


async def lookup_regions(chunk: dict[str, Any]) -> dict[str, Any]:
    """Add a region to each row. Fails the first attempt of every third chunk, as a real
    remote service sometimes does; the retry policy (exponential backoff) takes care of it."""
    job = rrq_flow.current_job()
    if job.attempt == 1 and zlib.crc32(job.id.encode()) % 3 == 0:
        raise ConnectionError("region service timed out")
    for row in chunk["rows"]:
        first = int(row["ip"].split(".")[0])
        row["region"] = "eu-west" if first == 203 else "us-east"
    return chunk


def record_chunk(chunk: dict[str, Any]) -> dict[str, int]:
    """Store this chunk's statistics (one file per job id: idempotent) and re-render the report."""
    rows = chunk["rows"]
    stats = {
        "file": chunk["file"],
        "requests": len(rows),
        "errors": sum(1 for r in rows if r["status"] >= 500),
        "not_found": sum(1 for r in rows if r["status"] == 404),
        "bytes": sum(r["bytes"] for r in rows),
        "slow": sum(1 for r in rows if r["ms"] > 500),
        "paths": dict(Counter(r["path"] for r in rows)),
        "regions": dict(Counter(r["region"] for r in rows)),
    }
    chunks_dir = OUT / "chunks"
    chunks_dir.mkdir(parents=True, exist_ok=True)
    name = rrq_flow.current_job().id.replace("/", "_").replace(">", "_")
    (chunks_dir / f"{name}.json").write_text(json.dumps(stats))
    _render_report(chunks_dir)
    return {"requests": stats["requests"]}


def _render_report(chunks_dir: Path) -> None:
    per_file: dict[str, Counter[str]] = {}
    paths: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    for f in sorted(chunks_dir.glob("*.json")):
        s = json.loads(f.read_text())
        c = per_file.setdefault(s["file"], Counter())
        for key in ("requests", "errors", "not_found", "bytes", "slow"):
            c[key] += s[key]
        paths.update(s["paths"])
        regions.update(s["regions"])
    lines = [
        "# Access log report",
        "",
        "| file | requests | 5xx | 404 | slow (>500 ms) | MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in sorted(per_file.items()):
        lines.append(
            f"| {name} | {c['requests']} | {c['errors']} | {c['not_found']} | "
            f"{c['slow']} | {c['bytes'] / 1e6:.1f} |"
        )
    lines += [
        "",
        "Top paths: " + ", ".join(f"{p} ({n})" for p, n in paths.most_common(5)),
        "",
        "Regions: " + ", ".join(f"{r} ({n})" for r, n in sorted(regions.items())),
        "",
    ]
    tmp = OUT / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(OUT / "report.md")

"""Handlers of the quickstart pipeline: split documents, analyse paragraphs, write a report.

Each handler is a plain function; what it returns becomes the argument of the next stage's job
(``next`` in pipeline.yaml). ``split_document`` returns a list and its queue has ``fan_out``:
every paragraph becomes its own ``analyze`` job.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import rrq_flow

HERE = Path(__file__).resolve().parent
REPORT = HERE / "out" / "report.md"
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "them",
        "there",
        "they",
        "this",
        "to",
        "was",
        "were",
        "which",
        "with",
        "you",
        "your",
        "not",
        "all",
        "so",
        "we",
    ]
)


def split_document(path: str) -> list[dict[str, Any]]:
    """Read one document and return its paragraphs (each becomes an ``analyze`` job)."""
    text = (HERE / path).read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    rrq_flow.current_job().logger.info("%s: %d paragraphs", path, len(paragraphs))
    return [{"doc": path, "n": i + 1, "text": p} for i, p in enumerate(paragraphs)]


async def analyze_paragraph(paragraph: dict[str, Any]) -> dict[str, Any]:
    """Count the words of one paragraph and find its three most frequent meaningful words."""
    words = re.findall(r"[a-z']+", paragraph["text"].lower())
    common = collections.Counter(w for w in words if w not in STOPWORDS and len(w) > 2)
    return {
        "doc": paragraph["doc"],
        "n": paragraph["n"],
        "words": len(words),
        "top": [w for w, _ in common.most_common(3)],
    }


def write_report_line(analysis: dict[str, Any]) -> str:
    """Append one line to out/report.md (the report queue has concurrency 1)."""
    REPORT.parent.mkdir(exist_ok=True)
    line = (
        f"| {analysis['doc']} | {analysis['n']} | {analysis['words']} | "
        f"{', '.join(analysis['top'])} |\n"
    )
    if not REPORT.exists():
        REPORT.write_text("| document | paragraph | words | top words |\n|---|---|---|---|\n")
    with REPORT.open("a", encoding="utf-8") as f:
        f.write(line)
    return str(REPORT.relative_to(HERE))

"""Handlers of the quickstart pipeline: split documents, analyse paragraphs, write a report.

Each handler is a plain function; what it returns becomes the argument of the next stage's job
(``next`` in pipeline.yaml). ``split_documents`` returns a list and its queue has ``fan_out``:
every paragraph becomes its own ``analyze`` job. ``report`` is a join: it runs once, with the
list of every analysis in paragraph order.
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


def split_documents(folder: str) -> list[dict[str, Any]]:
    """Read every ``*.txt`` of a folder (by name) and return their paragraphs (one ``analyze``
    job each)."""
    paragraphs: list[dict[str, Any]] = []
    for doc in sorted((HERE / folder).glob("*.txt")):
        text = doc.read_text(encoding="utf-8")
        parts = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        rrq_flow.current_job().logger.info("%s: %d paragraphs", doc.name, len(parts))
        name = f"{folder}/{doc.name}"
        paragraphs += [{"doc": name, "n": i + 1, "text": p} for i, p in enumerate(parts)]
    return paragraphs


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


def write_report(analyses: list[dict[str, Any]]) -> str:
    """The join: write out/report.md whole from every analysis (paragraph order), atomically."""
    group = rrq_flow.current_job().group
    lines = ["| document | paragraph | words | top words |", "|---|---|---|---|"]
    lines += [f"| {a['doc']} | {a['n']} | {a['words']} | {', '.join(a['top'])} |" for a in analyses]
    if group is not None and group.failed:
        lines += ["", f"{len(group.failed)} paragraph(s) could not be analysed:"]
        lines += [f"- {f['id']}: {f['state']}" for f in group.failed]
    REPORT.parent.mkdir(exist_ok=True)
    tmp = REPORT.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(REPORT)  # a reader never sees half a report
    return str(REPORT.relative_to(HERE))

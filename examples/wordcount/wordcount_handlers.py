"""Word counts over a folder of text files: map (count one file) and reduce (a join)."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import rrq_flow

HERE = Path(__file__).resolve().parent
TOP = 10


def list_files(folder: str) -> list[str]:
    """The folder's ``*.txt`` files, by name: each becomes one ``count`` job (fan_out)."""
    return [f"{folder}/{p.name}" for p in sorted((HERE / folder).glob("*.txt"))]


def count_words(path: str) -> dict[str, Any]:
    """Map: the words of one file and how often each occurs."""
    words = re.findall(r"[a-z']+", (HERE / path).read_text(encoding="utf-8").lower())
    return {"file": path, "words": len(words), "counts": dict(collections.Counter(words))}


def sum_counts(per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce (join): every file's counts, in file order, summed into the most common words."""
    total: collections.Counter[str] = collections.Counter()
    for item in per_file:
        total.update(item["counts"])
    group = rrq_flow.current_job().group
    return {
        "files": [item["file"] for item in per_file],
        "failed_files": [f["id"] for f in group.failed] if group else [],
        "words": sum(item["words"] for item in per_file),
        "top": total.most_common(TOP),
    }

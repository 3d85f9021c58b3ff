"""Handlers of the thumbnails example pipeline (``pipeline.yaml.example``).

``fetch`` stands in for an HTTP download: it makes a deterministic greyscale "image" from the
URL, so the example runs anywhere without network access. ``resize`` box-filters it down to a
thumbnail in pure Python. Both take and return JSON-able data, as every handler must.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import trio

Image = dict[str, Any]


async def fetch(url: str, size: int = 64) -> Image:
    """Pretend to download ``url``: a ``size`` x ``size`` greyscale image derived from it."""
    if not 1 <= size <= 512:
        raise ValueError(f"size must be from 1 to 512, got {size}")
    await trio.sleep(0)  # a real fetch would await the network here
    seed = hashlib.sha256(url.encode()).digest()
    pixels = [[(seed[(x * 7 + y) % 32] + x * y) % 256 for x in range(size)] for y in range(size)]
    return {"url": url, "width": size, "height": size, "pixels": pixels}


def resize(image: Mapping[str, Any], width: int = 16, height: int = 16) -> Image:
    """Box-filter ``image`` (as returned by :func:`fetch`) down to ``width`` x ``height``."""
    src_w, src_h = int(image["width"]), int(image["height"])
    pixels: list[list[int]] = image["pixels"]
    width, height = min(width, src_w), min(height, src_h)
    out: list[list[int]] = []
    for ty in range(height):
        y0, y1 = ty * src_h // height, (ty + 1) * src_h // height
        row = []
        for tx in range(width):
            x0, x1 = tx * src_w // width, (tx + 1) * src_w // width
            block = [pixels[y][x] for y in range(y0, y1) for x in range(x0, x1)]
            row.append(sum(block) // len(block))
        out.append(row)
    digest = hashlib.sha256(repr(out).encode()).hexdigest()[:16]
    return {
        "url": image.get("url"),
        "width": width,
        "height": height,
        "pixels": out,
        "digest": digest,
    }

"""Batch-run ids: what a valid one looks like, and a readable generated one.

A run id groups the jobs of one batch (``run --input``, ``enqueue --jsonl``, an API enqueue) and
every job that descends from them; ``rrq-flow runs`` / ``results`` and ``wait_run`` read a run
back through the run's index (see docs/protocol.md, "Runs").
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_run_id(run: str | None) -> str:
    """The run id as the scripts store it ("" for none); raises ValueError when it is invalid."""
    if run is None or run == "":
        return ""
    if not isinstance(run, str) or not RUN_ID_PATTERN.fullmatch(run):
        raise ValueError(
            f"run id {run!r} is invalid: use 1 to 128 of the characters A-Z a-z 0-9 . _ : -"
        )
    return run


def new_run_id() -> str:
    """A sortable, readable run id: UTC time plus 6 random hex digits (20261130-102400-3f9a1c)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"

"""Handlers of the join fault scenario: a fan-out of N items, branches that take a while, and a
join that records each of its executions (so the test can count them)."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import trio

from rrq_flow import current_job

JOIN_LOG_ENV = "RRQ_JOIN_LOG"


async def fan(n: int) -> list[int]:
    return list(range(n))


async def branch(x: int) -> int:
    await trio.sleep(random.uniform(0.01, 0.1))
    return x


async def gather(values: list[Any]) -> int:
    job = current_job()
    group = job.group
    record = {
        "id": job.id,
        "epoch": job.epoch,
        "pid": os.getpid(),
        "n": len(values),
        "in_order": values == sorted(values),
        "size": group.size if group else None,
        "failed": group.failed_count if group else None,
    }
    with open(os.environ[JOIN_LOG_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return len(values)

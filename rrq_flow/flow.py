"""Flow control across all workers: rate limits, running caps and pausing a queue.

The decisions are made by ``claim.lua`` on the Redis server's clock, so they hold however many
worker processes and hosts serve a queue: a GCRA rate limiter (``rate_limit``, ``rate_burst``),
a cap counted from the queue's active index (``max_running``; a reaped or settled job gives its
slot back with no separate counter to drift) and a pause (``q:<queue>:flow`` field
``paused_until``, set by ``pause.lua``). This module turns the configuration into the claim's
arguments and reads the state back for ``status``. See docs/configuration.md.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from rrq_flow.config.model import QueueConfig
from rrq_flow.protocol.ops import FlowLimits

_RATE = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(s|min|h)\s*$")
PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0}
FOREVER = -1  # paused_until of a pause with no end


def parse_rate(text: str) -> tuple[int, float]:
    """``"50/s"`` -> (50, 1.0): starts per period and the period in seconds."""
    m = _RATE.match(text)
    if m is None:
        raise ValueError(f"rate_limit must look like '50/s', '600/min' or '10/h', got {text!r}")
    return int(m.group(1)), PERIODS[m.group(2)]


RATE_LOOKAHEAD = 0.05  # seconds: starts due this soon are granted ahead, with their start time


def flow_limits(cfg: QueueConfig) -> FlowLimits:
    """The claim script's flow-control arguments for a queue (zeros: no limit).

    The lookahead lets a worker that wakes up late still take its start on time; it stays well
    inside the time a claimed job may wait unstarted (``lock_extension / 2``).
    """
    return FlowLimits(
        interval_ms=cfg.rate_interval_ms,
        burst=cfg.rate_burst if cfg.rate_limit is not None else 1,
        max_running=cfg.max_running or 0,
        lookahead_ms=round(min(RATE_LOOKAHEAD, cfg.lock_extension / 4) * 1000),
    )


@dataclass(frozen=True, slots=True)
class FlowState:
    """A queue's flow control for ``status``: configuration and what Redis holds now."""

    rate_limit: str | None  # as configured, e.g. "50/s"
    rate_burst: int | None
    max_running: int | None
    running: int  # jobs in the active index now (what max_running is counted against)
    paused: bool
    paused_until: float | None  # Unix seconds (server clock); None: not paused or no end
    next_start_at: float | None  # under rate_limit: earliest next start (server clock)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def flow_state(cfg: QueueConfig, fields: dict[str, Any], running: int, now_ms: int) -> FlowState:
    """Build the state from the ``q:<queue>:flow`` hash read at server time ``now_ms``."""
    until = int(fields.get("paused_until") or 0)
    paused = until == FOREVER or until > now_ms
    next_start = None
    if cfg.rate_limit is not None:
        tat = float(fields.get("tat") or 0)
        tau = (cfg.rate_burst - 1) * cfg.rate_interval_ms
        next_start = max(now_ms, tat - tau) / 1000
    return FlowState(
        rate_limit=cfg.rate_limit,
        rate_burst=cfg.rate_burst if cfg.rate_limit is not None else None,
        max_running=cfg.max_running,
        running=running,
        paused=paused,
        paused_until=until / 1000 if paused and until != FOREVER else None,
        next_start_at=next_start,
    )

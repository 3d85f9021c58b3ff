"""Cron schedules: every running non-burst worker enqueues each schedule's ticks, exactly once.

A tick's job id is ``schedule:<name>:<tick as Unix seconds>``, so however many workers and hosts
enqueue the same tick, the enqueue script makes one job (a repeated id answers ``exists``).
Redis keeps, per schedule, a cursor (server ms up to which every tick was handled) and the last
tick enqueued, in the HASH ``schedules``; all times are the Redis server's (``TIME``).

Workers pass at least every :data:`MAX_SLEEP`, each pass moving the cursor to its time. On a
pass, the ticks after the cursor and up to now are due. While the cursor is fresh (at most
:data:`STALE_MS` old: some worker kept passing) every due tick is on time, however late a busy
worker got to it. A stale cursor means no worker ran: the due ticks older than
:data:`LATE_LIMIT_MS` were missed, and ``catch_up`` decides: ``latest`` enqueues the most recent
missed tick, ``all`` every one (the newest :data:`MAX_CATCH_UP`), ``none`` none of them.
See docs/configuration.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from rrq_flow.config.model import PipelineConfig, ScheduleConfig

log = logging.getLogger("rrq_flow.schedules")

STALE_MS = 3000  # a cursor older than this: no worker passed for a while (it is 1 s normally)
LATE_LIMIT_MS = 1000  # then a due tick older than this was missed (no worker was running)
MAX_CATCH_UP = 1000  # missed ticks enqueued at most per schedule and pass (catch_up: all)
MAX_SLEEP = 1.0  # seconds between passes at most


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a usable cron expression, or None if it is."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        return (
            f"a cron expression has 5 fields (minute hour day month weekday) or 6 with seconds "
            f"first, got {len(fields)}: {expression!r}"
        )
    try:
        croniter(expression, second_at_beginning=True)
    except (ValueError, KeyError) as exc:  # croniter's errors derive from ValueError
        return f"not a valid cron expression: {expression!r} ({exc})"
    return None


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone, or None if it is."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
    return None


def ticks_after(schedule: ScheduleConfig, after_ms: int) -> Iterator[int]:
    """The schedule's ticks strictly after ``after_ms`` (Unix ms), in order, without end."""
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    start = dt.datetime.fromtimestamp(after_ms / 1000, tz)
    it = croniter(schedule.cron, start, second_at_beginning=True)
    while True:
        yield round(it.get_next(float) * 1000)


def next_tick(schedule: ScheduleConfig, now_ms: int) -> int:
    return next(ticks_after(schedule, now_ms))


def job_id(name: str, tick_ms: int) -> str:
    return f"schedule:{name}:{tick_ms // 1000}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass enqueues for one schedule."""

    ticks: list[int]  # ticks to enqueue (ms), oldest first
    missed: int  # due ticks that were missed (enqueued or not, per catch_up)


def plan(schedule: ScheduleConfig, cursor_ms: int | None, now_ms: int) -> Plan:
    """The ticks due since ``cursor_ms`` (None: the schedule never ran; nothing is due)."""
    if cursor_ms is None or cursor_ms >= now_ms:
        return Plan([], 0)
    on_time: list[int] = []
    missed: list[int] = []
    for tick in ticks_after(schedule, cursor_ms):
        if tick > now_ms:
            break
        if now_ms - cursor_ms <= STALE_MS or now_ms - tick <= LATE_LIMIT_MS:
            on_time.append(tick)
        else:
            missed.append(tick)
            if len(missed) > MAX_CATCH_UP:
                missed.pop(0)
    if schedule.catch_up == "all":
        chosen = missed
    elif schedule.catch_up == "latest":
        chosen = missed[-1:]
    else:
        chosen = []
    return Plan(chosen + on_time, len(missed))


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as ``rrq-flow schedules`` and ``status`` show it (Unix seconds)."""

    name: str
    queue: str
    cron: str
    timezone: str
    catch_up: str
    next_tick: float
    last_tick: float | None  # the last tick enqueued; None if none yet

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "cron": self.cron,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
            "next_tick": self.next_tick,
            "last_tick": self.last_tick,
        }


def states(config: PipelineConfig, stored: dict[str, str], now_ms: int) -> list[ScheduleState]:
    """Every schedule's state from the ``schedules`` hash read at server time ``now_ms``."""
    out = []
    for name, s in config.schedules.items():
        last = stored.get(f"{name}:last")
        out.append(
            ScheduleState(
                name=name,
                queue=s.queue,
                cron=s.cron,
                timezone=s.timezone,
                catch_up=s.catch_up,
                next_tick=next_tick(s, now_ms) / 1000,
                last_tick=int(last) / 1000 if last else None,
            )
        )
    return out

"""The worker's part in cron schedules: enqueue each due tick (see :mod:`rrq_flow.schedules`).

Every running non-burst worker runs this task; the job id of a tick makes the enqueue happen
once however many do. One pass per due tick (at most every second): one round trip to read the
server time and the cursors, one enqueue call per schedule with due ticks, one write of the
cursors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from rrq_flow.client._core import encode_payload
from rrq_flow.errors import PayloadError
from rrq_flow.protocol.ops import NewJob, parse_enqueue
from rrq_flow.protocol.scripts import pipe_server_ms
from rrq_flow.schedules import MAX_SLEEP, job_id, next_tick, plan
from rrq_flow.worker.redis_calls import TRANSIENT

if TYPE_CHECKING:
    from rrq_flow.worker.worker import Worker

log = logging.getLogger("rrq_flow.schedules")


async def run_schedules(worker: Worker) -> None:
    """Enqueue the ticks of every schedule until the worker stops."""
    config = worker.config
    payloads: dict[str, tuple[str, str]] = {}
    for name, s in config.schedules.items():
        try:
            payloads[name] = encode_payload(
                s.queue, s.args, s.kwargs, config.queue(s.queue).max_payload_bytes
            )
        except PayloadError as exc:
            log.error("schedule %s is skipped: %s", name, exc)
    if not payloads:
        return
    key = worker.layout.schedules
    while not worker.stopping.is_set():
        try:
            delay = await _pass(worker, key, payloads)
        except TRANSIENT:
            delay = MAX_SLEEP  # Redis is away: the next pass catches up (catch_up decides)
        with trio.move_on_after(delay):
            await worker.stopping.wait()


async def _pass(worker: Worker, key: str, payloads: dict[str, tuple[str, str]]) -> float:
    """Enqueue what is due now; return the seconds until the next tick (at most MAX_SLEEP)."""
    async with worker.redis.pipeline(transaction=False) as pipe:
        clock = pipe_server_ms(pipe, key)
        read = pipe.hgetall(key)
    now = await clock()
    stored = {str(k): str(v) for k, v in (await read).items()}
    wake = now + round(MAX_SLEEP * 1000)
    updates: dict[str, str | int] = {}
    for name, (args_json, kwargs_json) in payloads.items():
        s = worker.config.schedules[name]
        cursor = stored.get(f"{name}:cursor")
        todo = plan(s, int(cursor) if cursor else None, now)
        if todo.ticks:
            jobs = [NewJob(job_id(name, t), args_json, kwargs_json) for t in todo.ticks]
            cfg = worker.config.queue(s.queue)
            verdicts = []
            for k in sorted({worker.parts.index(j.id) for j in jobs}):  # each to its partition
                mine = [j for j in jobs if worker.parts.index(j.id) == k]
                call = worker.parts.protocols[k].enqueue(
                    s.queue, cfg.retry.max_attempts, worker.generations[k], mine
                )
                verdicts += parse_enqueue(await worker.caller.once(call), call)
            new = sum(1 for _, verdict in verdicts if verdict == "new")
            if new:
                log.info("schedule %s: enqueued %d job(s) into %s", name, new, s.queue)
            if todo.missed and new:
                log.warning(
                    "schedule %s: %d tick(s) missed while no worker ran (catch_up: %s)",
                    name,
                    todo.missed,
                    s.catch_up,
                )
            updates[f"{name}:last"] = max(todo.ticks)
        updates[f"{name}:cursor"] = now
        wake = min(wake, next_tick(s, now))
    await worker.redis.hset(key, updates)
    return max(0.0, (wake - now) / 1000) + 0.002

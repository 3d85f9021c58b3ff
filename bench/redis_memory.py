"""Redis memory per finished job: what a job leaves in Redis for ``result_ttl`` after it is done.

Starts a private redis-server, enqueues N jobs whose arguments are a ``--payload``-byte JSON array
(as ``SyncClient.enqueue_many`` does: uuid4 ids, batches of 1,000), claims and completes them 10
at a time through the same scripts a worker calls (owner id of a worker's shape), and reports:

- ``used_memory`` (INFO memory) per job: after the enqueue (a queued job) and after the
  completion (a finished job), each against the empty pipeline's baseline;
- ``MEMORY USAGE`` (SAMPLES 0) of every key a finished job leaves (``job:<id>``, ``args:<id>``,
  ``result:<id>``, ``errors:<id>``, ``children:<id>``) for a sample of jobs, and
  ``OBJECT ENCODING`` of the record.

    .venv/bin/python bench/redis_memory.py --n 100000 [--payload 100] [--result null]
        [--keep-args]

The queue's own keys (stats, the throughput ring) are constant in N; ``used_memory`` deltas are
divided by N, so at N = 100,000 they are per job. Deterministic: no timing is involved.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Completion, NewJob, Protocol, parse_claim
from rrq_flow.protocol.scripts import call_sync, preload_sync
from rrq_flow.redis_server import start_redis_server

WORKER = "bench-host.example:123456:a1b2c3"  # the shape of rrq_flow.worker.worker.new_worker_id


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def payload_json(size: int) -> str:
    """A JSON array of one string, ``size`` bytes long in all (at least 4)."""
    return json.dumps(["x" * max(0, size - 4)], separators=(",", ":"))


@contextlib.contextmanager
def private_redis() -> Iterator[redis.Redis]:
    """A private redis-server on a unix socket (no persistence), scripts loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "r.sock"
        server = start_redis_server(Path(tmp), unix_socket=sock, appendonly=False)
        try:
            r = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
            preload_sync(r)
            yield r
        finally:
            server.stop()


def measure(n: int, payload: int, result: str, keep_args: bool) -> dict[str, Any]:
    with private_redis() as r:
        layout = KeyLayout("mem")
        p = Protocol(layout)
        r.hset(layout.meta, "generation", "g")
        args_json = payload_json(payload)
        ids = [uuid.uuid4().hex for _ in range(n)]
        base = used(r)
        for i in range(0, n, 1000):
            c = p.enqueue("q", 3, "g", [NewJob(j, args_json) for j in ids[i : i + 1000]])
            call_sync(r, c.script, c.keys, c.args)
        queued = used(r)
        extra: dict[str, Any] = {}
        if keep_args:
            if "keep_args" not in inspect.signature(p.complete).parameters:
                raise SystemExit("this tree has no keep_args")
            extra["keep_args"] = True
        done = 0
        while True:
            c = p.claim("q", "g", WORKER, 10, 30000, 60000)
            reply = parse_claim(call_sync(r, c.script, c.keys, c.args))
            if not reply.jobs:
                break
            completions = [Completion(j.id, j.epoch, result) for j in reply.jobs]
            c = p.complete("q", WORKER, 86_400_000, completions, **extra)
            call_sync(r, c.script, c.keys, c.args)
            done += len(reply.jobs)
        finished = used(r)
        sample = ids[:: max(1, n // 200)]
        per_key: dict[str, list[int]] = {}
        encodings: dict[str, int] = {}
        for job_id in sample:
            for kind in ("job", "args", "result", "errors", "children"):
                key = f"{layout.prefix}{kind}:{job_id}"
                size = r.memory_usage(key, samples=0)
                if size is not None:
                    per_key.setdefault(kind, []).append(int(size))
            enc = str(r.object("encoding", layout.job(job_id)))
            encodings[enc] = encodings.get(enc, 0) + 1
        record = r.hgetall(layout.job(ids[0]))
        return {
            "jobs": n,
            "done": done,
            "payload_bytes": len(args_json.encode()),
            "result": result,
            "keep_args": keep_args,
            "used_memory_per_queued_job": round((queued - base) / n, 1),
            "used_memory_per_finished_job": round((finished - base) / n, 1),
            "memory_usage_per_key_mean": {k: round(sum(v) / len(v), 1) for k, v in per_key.items()},
            "memory_usage_finished_job_total": round(
                sum(sum(v) / len(v) for v in per_key.values()), 1
            ),
            "record_encoding": encodings,
            "record_fields": len(record),
            "redis_version": r.info("server")["redis_version"],
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--payload", type=int, default=100, help="bytes of the args JSON")
    ap.add_argument("--result", default="null", help="the result JSON each job completes with")
    ap.add_argument("--keep-args", action="store_true", help="queue setting keep_args: true")
    a = ap.parse_args()
    print(json.dumps(measure(a.n, a.payload, a.result, a.keep_args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Building script calls and reading their replies: the one place that knows each script's
KEYS / ARGV layout. Pure functions of data, shared by the async and sync clients and the worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.scripts import Script, ScriptArg, script

ERRORS_KEPT = 10  # attempt errors kept per job
# Fan-out in bounded steps (docs/protocol.md): every script call creates at most this many jobs,
# so no call holds Redis for long (about 20 ms for 500 on a loaded 2-core machine).
CHILDREN_PER_CALL = 200
INLINE_CHILDREN = 100  # a completion with more children is staged, then expanded
EXPAND_CHUNK = 100  # children created per expand.lua call (~15 ms on a loaded 2-core machine)
STAGE_CHUNK = 1000  # staged children per stage.lua call
STAGE_BYTES = 512 << 10  # and at most about this many bytes of arguments per stage call


@dataclass(frozen=True, slots=True)
class Call:
    script: Script
    keys: list[str]
    args: list[ScriptArg]


# Not frozen (treated as immutable all the same): a frozen dataclass costs ~2.5 µs more to
# build, once per job of every enqueue_many. unsafe_hash keeps it usable as a key.
@dataclass(slots=True, unsafe_hash=True)
class NewJob:
    """A job to create. ``when``: "" now, "+<ms>" after a delay, "=<ms>" at an absolute time."""

    id: str
    args_json: str = "[]"
    kwargs_json: str = "{}"
    when: str = ""
    unique_key: str = ""
    parent: str = ""
    priority: int = 0  # higher is claimed first (docs/protocol.md, priority levels)
    run: str = ""  # batch-run id ("" none); descendants inherit it


@dataclass(frozen=True, slots=True)
class ChildJob:
    """A job created atomically with its parent's completion (next stage, or outbox)."""

    queue: str
    id: str
    args_json: str
    kwargs_json: str
    max_attempts: int
    when: str = ""
    unique_key: str = ""
    priority: int | None = None  # None: the parent's
    # 'next' a next-stage job | 'join' a value for a join queue (args_json is the value itself)
    # | 'out' an outbox job (outside any group)
    kind: str = "next"
    branch: int = 0  # position of the fan-out item it comes from


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A fan-out whose items lead to a join opens a group; this is the join it will create."""

    size: int
    queue: str
    join_id: str
    max_attempts: int
    max_bytes: int
    on_failure: str

    def as_json(self) -> str:
        return encode_json(
            {
                "size": self.size,
                "queue": self.queue,
                "join_id": self.join_id,
                "max_attempts": self.max_attempts,
                "max_bytes": self.max_bytes,
                "on_failure": self.on_failure,
            }
        )


# Not frozen (treated as immutable all the same): a frozen dataclass costs ~3 µs more to
# build, once per job on the worker's hot path. unsafe_hash keeps it usable as a key.
@dataclass(slots=True, unsafe_hash=True)
class Completion:
    """A successful attempt: its children inline, or ``staged`` children already staged."""

    id: str
    epoch: int
    result_json: str
    children: Sequence[ChildJob] = ()
    group: GroupSpec | None = None
    staged: int = 0


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt. ``action``: 'retry' (if attempts remain), 'dead', or 'cancel'."""

    id: str
    epoch: int
    error_json: str
    action: str
    delay_ms: int = 0


# Not frozen (treated as immutable all the same): a frozen dataclass costs ~3 µs more to
# build, once per job on the worker's hot path. unsafe_hash keeps it usable as a key.
@dataclass(slots=True, unsafe_hash=True)
class ClaimedJob:
    id: str
    epoch: int
    attempt: int
    max_attempts: int
    args_json: str
    kwargs_json: str
    enqueued_at: int
    parent: str
    start_at: int = 0  # server ms; later than the claim's now for a start granted ahead


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """A queue's limits across all workers, applied by the claim script (0: none)."""

    interval_ms: float = 0.0  # between two starts (rate_limit)
    burst: int = 1
    max_running: int = 0
    lookahead_ms: int = 0  # starts due this soon are granted now, with their start time


@dataclass(frozen=True, slots=True)
class ClaimReply:
    lost: bool
    generation: str = ""
    now: int = 0
    next_due: int | None = None
    jobs: list[ClaimedJob] = field(default_factory=list)
    # Why ready jobs were left: '' (none were, or this worker is full), 'paused', 'rate', 'cap'.
    held: str = ""


@dataclass(frozen=True, slots=True)
class ExpandReply:
    state: str  # 'NONE' | 'MORE' | 'DONE'
    parent: str = ""
    created: int = 0


@dataclass(frozen=True, slots=True)
class ReapReply:
    guarded: bool
    requeued: int = 0
    dead: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Protocol:
    """Script calls for one pipeline's key layout. ``keep_args``: the queues whose done jobs
    keep their arguments (``keep_args: true``); every other queue's done jobs drop them."""

    layout: KeyLayout
    keep_args: frozenset[str] = frozenset()

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    def enqueue(
        self, queue: str, max_attempts: int, generation: str, jobs: Sequence[NewJob]
    ) -> Call:
        q = self.layout.queue(queue)
        args: list[ScriptArg] = [self.prefix, queue, max_attempts, generation, len(jobs)]
        add = args.extend
        for j in jobs:
            if j.when or j.unique_key or j.parent or j.priority or j.run:
                opts = encode_json([j.when, j.unique_key, j.parent, str(j.priority), j.run])
            else:
                opts = ""
            add((j.id, pack_args(j.args_json, j.kwargs_json), opts))
        return Call(script("enqueue"), [self.layout.meta, q.ready, q.wake, q.stats], args)

    def claim(
        self,
        queue: str,
        generation: str,
        worker: str,
        n: int,
        lease_ms: int,
        hard_ms: int,
        flow: FlowLimits | None = None,
    ) -> Call:
        q = self.layout.queue(queue)
        f = flow or FlowLimits()
        return Call(
            script("claim"),
            [self.layout.meta, q.ready, q.retry, q.active, q.wake, q.flow],
            [
                self.prefix,
                generation,
                worker,
                n,
                lease_ms,
                hard_ms,
                repr(f.interval_ms),
                f.burst,
                f.max_running,
                f.lookahead_ms,
            ],
        )

    def pause(self, queue: str, mode: str, duration_ms: int = -1) -> Call:
        """``mode`` 'pause' | 'extend' | 'resume'; ``duration_ms`` -1: until resumed."""
        q = self.layout.queue(queue)
        return Call(script("pause"), [q.flow, q.wake], [self.prefix, mode, duration_ms])

    def refresh(
        self, queue: str, worker: str, lease_ms: int, items: Iterable[tuple[str, int]]
    ) -> Call:
        args: list[ScriptArg] = [self.prefix, worker, lease_ms]
        for job_id, epoch in items:
            args += [job_id, epoch]
        return Call(script("refresh"), [self.layout.queue(queue).active], args)

    def complete(
        self,
        queue: str,
        worker: str,
        result_ttl_ms: int,
        done: Sequence[Completion],
        *,
        keep_args: bool | None = None,
    ) -> Call:
        """``keep_args`` None: as the queue is configured (``self.keep_args``)."""
        q = self.layout.queue(queue)
        keep = queue in self.keep_args if keep_args is None else keep_args
        args: list[ScriptArg] = [
            self.prefix,
            worker,
            result_ttl_ms,
            "1" if keep else "0",
            len(done),
        ]
        for c in done:
            group = c.group.as_json() if c.group is not None else ""
            args += [c.id, c.epoch, c.result_json, group, c.staged, len(c.children)]
            for ch in c.children:
                args += [
                    ch.queue,
                    ch.id,
                    ch.args_json,
                    ch.kwargs_json,
                    ch.max_attempts,
                    ch.when,
                    ch.unique_key,
                    "" if ch.priority is None else ch.priority,
                    ch.kind,
                    ch.branch,
                ]
        return Call(
            script("complete"), [q.active, q.stats, q.tput, q.flow, q.wake, q.expanding], args
        )

    def stage(
        self,
        queue: str,
        worker: str,
        job_id: str,
        epoch: int,
        offset: int,
        lease_ms: int,
        children: Sequence[ChildJob],
    ) -> Call:
        """Append ``children`` to the attempt's staging list (they follow ``offset`` others)."""
        args: list[ScriptArg] = [self.prefix, worker, job_id, epoch, offset, lease_ms]
        args += [staged_entry(ch) for ch in children]
        return Call(script("stage"), [self.layout.queue(queue).active], args)

    def expand(
        self, queue: str, parent_id: str, limit: int, result_ttl_ms: int, idle_ms: int
    ) -> Call:
        """Create up to ``limit`` children of an expanding parent of ``queue`` ('' : take over
        the one idle longest, if idle for ``idle_ms``)."""
        q = self.layout.queue(queue)
        keep = "1" if queue in self.keep_args else "0"
        return Call(
            script("expand"),
            [q.expanding, q.stats, q.tput],
            [self.prefix, parent_id, limit, result_ttl_ms, idle_ms, keep],
        )

    def fail(
        self,
        queue: str,
        worker: str,
        result_ttl_ms: int,
        dead_letter: bool,
        failures: Sequence[Failure],
    ) -> Call:
        q = self.layout.queue(queue)
        args: list[ScriptArg] = [
            self.prefix,
            worker,
            result_ttl_ms,
            "1" if dead_letter else "0",
            ERRORS_KEPT,
        ]
        for f in failures:
            args += [f.id, f.epoch, f.error_json, f.action, f.delay_ms]
        return Call(script("fail"), [q.active, q.retry, q.stats, q.tput, q.flow, q.wake], args)

    def release(
        self, queue: str, worker: str, result_ttl_ms: int, items: Iterable[tuple[str, int]]
    ) -> Call:
        """Give jobs back (shutdown); one whose cancel was requested ends cancelled instead."""
        q = self.layout.queue(queue)
        args: list[ScriptArg] = [self.prefix, worker, result_ttl_ms]
        for job_id, epoch in items:
            args += [job_id, epoch]
        return Call(script("release"), [q.ready, q.active, q.wake, q.stats, q.tput], args)

    def reap(
        self,
        queue: str,
        *,
        guard_ms: int,
        max_stalls: int,
        dead_letter: bool,
        result_ttl_ms: int,
        limit: int = 1000,
        gap_ms: int = 0,
        grace_ms: int = 0,
    ) -> Call:
        """``gap_ms`` / ``grace_ms``: the serving clock (see reap.lua); 0 turns it off."""
        q = self.layout.queue(queue)
        return Call(
            script("reap"),
            [q.ready, q.active, q.wake, q.stats, q.reaper, q.tput, self.layout.workers],
            [
                self.prefix,
                guard_ms,
                max_stalls,
                "1" if dead_letter else "0",
                limit,
                result_ttl_ms,
                ERRORS_KEPT,
                gap_ms,
                grace_ms,
            ],
        )

    def requeue(
        self, queue: str, ids: Sequence[str] | None, *, limit: int = 1000, dry_run: bool = False
    ) -> Call:
        q = self.layout.queue(queue)
        args: list[ScriptArg] = [
            self.prefix,
            "all" if ids is None else "ids",
            limit,
            "1" if dry_run else "0",
        ]
        args += list(ids or ())
        return Call(script("requeue"), [q.dead, q.ready, q.wake, q.stats], args)

    def cancel(self, queue: str, job_id: str, result_ttl_ms: int) -> Call:
        q = self.layout.queue(queue)
        return Call(
            script("cancel"), [q.ready, q.retry, q.stats], [self.prefix, job_id, result_ttl_ms]
        )

    def purge(self, queue: str, *, limit: int = 1000) -> Call:
        """Delete up to ``limit`` dead-lettered jobs of ``queue`` (records, errors, entries)."""
        q = self.layout.queue(queue)
        return Call(script("purge"), [q.dead, q.stats], [self.prefix, limit])

    def heartbeat(
        self, worker: str, ttl_ms: int, forget_ms: int, fields: dict[str, ScriptArg]
    ) -> Call:
        args: list[ScriptArg] = [self.prefix, worker, ttl_ms, forget_ms]
        for k, v in fields.items():
            args += [k, v]
        return Call(
            script("heartbeat"),
            [self.layout.workers, self.layout.worker(worker), self.layout.meta],
            args,
        )

    def drained(self, queues: Sequence[str], *, with_total: bool = False) -> Call:
        keys: list[str] = []
        for name in queues:
            q = self.layout.queue(name)
            keys += [q.ready, q.retry, q.active, q.expanding]
        return Call(script("drained"), keys, [self.prefix, "1" if with_total else "0"])


# --- replies --------------------------------------------------------------------------------


def parse_enqueue(reply: Sequence[Any], call: Call) -> list[tuple[str, str]]:
    """[(job id, verdict)] for the jobs of an enqueue ``call``, verdict 'new' | 'exists' |
    'unique' (the id is then the unfinished job holding the unique key). The script answers
    only the jobs that were not new, as (position, id, verdict) triples."""
    out = [(str(job_id), "new") for job_id in call.args[5::3]]
    for i in range(0, len(reply), 3):
        out[int(reply[i]) - 1] = (str(reply[i + 1]), str(reply[i + 2]))
    return out


def pack_args(args_json: str, kwargs_json: str) -> str:
    """A job's arguments as ``args:<id>`` stores them: ``<n>:<args JSON><kwargs JSON>``, n the
    UTF-8 length of the args JSON (the inverse of :func:`split_args`)."""
    n = len(args_json) if args_json.isascii() else len(args_json.encode())
    return f"{n}:{args_json}{kwargs_json}"


def parse_claim(reply: Sequence[Any]) -> ClaimReply:
    if reply[0] == "LOST":
        return ClaimReply(lost=True, generation=str(reply[1]))
    now, next_due, count = int(reply[1]), int(reply[2]), int(reply[3])
    jobs = []
    for i in range(count):
        b = 4 + i * 9
        jobs.append(
            ClaimedJob(
                id=reply[b],
                epoch=int(reply[b + 1]),
                attempt=int(reply[b + 2]),
                max_attempts=int(reply[b + 3]),
                args_json=reply[b + 4],
                kwargs_json=reply[b + 5],
                enqueued_at=int(reply[b + 6]),
                parent=reply[b + 7],
                start_at=int(reply[b + 8]),
            )
        )
    held = str(reply[4 + count * 9]) if len(reply) > 4 + count * 9 else ""
    return ClaimReply(False, "", now, None if next_due < 0 else next_due, jobs, held)


def split_args(blob: str | None) -> tuple[str, str]:
    """(args JSON, kwargs JSON) from the value of ``args:<id>`` (``<n>:<args><kwargs>``, n the
    UTF-8 length of the args JSON); ('[]', '{}') when the key is gone (a done job's arguments
    are dropped unless its queue has ``keep_args``)."""
    if not blob:
        return "[]", "{}"
    head, _, rest = blob.partition(":")
    data = rest.encode()
    n = int(head)
    return data[:n].decode(), data[n:].decode()


def staged_entry(ch: ChildJob) -> str:
    """One staged child: its fields joined by NUL (never inside JSON text or a valid id)."""
    prio = "" if ch.priority is None else str(ch.priority)
    fields = (
        ch.queue,
        ch.id,
        str(ch.max_attempts),
        ch.when,
        ch.unique_key,
        prio,
        ch.kind,
        str(ch.branch),
    )
    if any("\0" in f for f in fields):
        raise ValueError(f"child {ch.id!r}: a NUL character in its queue, id, when or unique key")
    return "\0".join((*fields, ch.args_json, ch.kwargs_json))


def parse_expand(reply: Sequence[Any]) -> ExpandReply:
    if reply[0] == "NONE":
        return ExpandReply("NONE")
    return ExpandReply(str(reply[0]), str(reply[1]), int(reply[2]))


def parse_reap(reply: Sequence[Any]) -> ReapReply:
    if reply[0] == "GUARDED":
        return ReapReply(guarded=True)
    return ReapReply(False, int(reply[1]), [str(x) for x in reply[3:]])


def ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


# One encoder for every call: json.dumps with these options builds a new JSONEncoder each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# JSONEncoder.encode still builds its C encoder on every call (about half of its time for a
# job's arguments); this one is built once, with the same options. It has no table of the
# containers being encoded (that table would have to be new for each call), so a value that
# contains itself ends in RecursionError: encode_json then asks _ENCODER, which tells a cycle
# (ValueError) from a value that is merely too deep (RecursionError), exactly as before.
_FAST_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def decode_json(text: str) -> Any:
    """``json.loads(text)``, by orjson where it can: a job's arguments are decoded once per
    attempt, and orjson takes ~0.4 µs for a short argument list where json takes ~3.6.

    The value, or the error raised, is exactly json's. orjson accepts strict RFC 8259 JSON
    only: whatever it refuses (NaN, a lone surrogate escape, nesting past its limit, text that
    is no JSON at all) is decoded by json.loads. It also reads an integer past 64 bits as a
    float, where json keeps it exact: a text with 19 digits in a row (any integer past 2**63
    has them; they may as well be inside a string) goes to json.loads too.
    """
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_LONG_DIGITS = re.compile("[0-9]{19}")


def encode_json(value: Any) -> str:
    """Compact JSON; raises TypeError / ValueError for values JSON cannot represent."""
    if _FAST_ENCODE is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_FAST_ENCODE(value, 0))
    except RecursionError:
        return _ENCODER.encode(value)

"""What the async and sync clients share: turning calls into script calls, no I/O."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rrq_flow.client.payload import JsonLimitError, check_encoded, too_deep_message
from rrq_flow.config.model import PipelineConfig
from rrq_flow.errors import PayloadError
from rrq_flow.protocol.ids import validate_job_id
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Call, NewJob, Protocol, encode_json, ms
from rrq_flow.protocol.partitions import Partitions
from rrq_flow.runs import check_run_id

DEFAULT_BATCH = 1000


def new_job_id() -> str:
    """32 random hex digits (128 bits, like a uuid4's hex, at a third of its cost)."""
    return os.urandom(16).hex()


def new_generation() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job for ``enqueue_many``: arguments plus the optional enqueue settings."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] | None = None
    job_id: str | None = None
    unique_key: str | None = None
    defer: float | str | dt.timedelta | None = None
    at: float | dt.datetime | None = None
    priority: int = 0  # higher is claimed first; FIFO within a priority
    run: str | None = None  # batch-run id; None: the run given to enqueue_many, if any


def when_field(defer: float | str | dt.timedelta | None, at: float | dt.datetime | None) -> str:
    """Encode defer/at for the enqueue script: "" now, "+<ms>" delay, "=<ms>" absolute."""
    if defer is not None and at is not None:
        raise ValueError("give defer or at, not both")
    if defer is not None:
        if isinstance(defer, dt.timedelta):
            seconds = defer.total_seconds()
        elif isinstance(defer, str):
            from rrq_flow.config.durations import parse_duration

            seconds = parse_duration(defer)
        else:
            seconds = float(defer)
        return f"+{ms(seconds)}" if seconds > 0 else ""
    if at is not None:
        epoch = at.timestamp() if isinstance(at, dt.datetime) else float(at)
        return f"={ms(epoch)}"
    return ""


MAX_PRIORITY = 1_000_000


def check_priority(priority: object) -> None:
    """A priority is an integer from -1,000,000 to 1,000,000 (ValueError otherwise)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer, got {priority!r}")
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be from -{MAX_PRIORITY:,} to {MAX_PRIORITY:,}")


def encode_payload(
    queue: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None, max_bytes: int
) -> tuple[str, str]:
    """JSON-encode a job's arguments, or raise PayloadError saying what is wrong.

    Besides values JSON cannot hold, arguments nested deeper than MAX_JSON_DEPTH and text that
    is not valid UTF-8 (lone surrogates) are refused: nothing invalid is ever sent to Redis.
    """
    args_list = list(args)
    kwargs_dict = dict(kwargs) if kwargs else None
    try:
        args_json = encode_json(args_list)
        kwargs_json = encode_json(kwargs_dict) if kwargs_dict else "{}"
    except RecursionError:
        raise PayloadError(f"job for queue {queue!r}: arguments: {too_deep_message()}") from None
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"job for queue {queue!r}: arguments are not JSON: {exc}") from None
    try:
        size = len(check_encoded(args_json, args_list))
        size += len(check_encoded(kwargs_json, kwargs_dict)) if kwargs_dict else 2
    except JsonLimitError as exc:
        raise PayloadError(f"job for queue {queue!r}: arguments: {exc}") from None
    if size > max_bytes:
        raise PayloadError(
            f"job for queue {queue!r}: payload is {size} bytes, over max_payload_bytes "
            f"({max_bytes}); store large data elsewhere and pass a reference"
        )
    return args_json, kwargs_json


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector held off while a batch of jobs is encoded.

    Encoding tens of thousands of jobs makes as many tracked objects that live until the batch
    is sent, and each time the tracked heap grows by a quarter the collector walks every object
    of the process: at 20,000 jobs, 30-40 ms of a ~100 ms build in a small process, more in a
    large one. Nothing made here is cyclic (reference counting frees all of it), so nothing is
    missed; collection resumes after, if it was on.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class RoutedCall:
    """An enqueue call to one partition and where its jobs were in the caller's list."""

    call: Call
    positions: list[int]


def in_order(routed: Sequence[RoutedCall], replies: Sequence[Sequence[str]]) -> list[str]:
    """The job ids of the enqueue ``replies`` to ``routed`` calls, in the caller's order."""
    from rrq_flow.protocol.ops import parse_enqueue

    ids: dict[int, str] = {}
    for r, reply in zip(routed, replies, strict=True):
        for pos, (job_id, _) in zip(r.positions, parse_enqueue(reply, r.call), strict=True):
            ids[pos] = job_id
    return [ids[i] for i in range(len(ids))]


class ClientCore:
    """Pipeline-bound helpers shared by Client and SyncClient."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.layout = KeyLayout(config.pipeline)
        self.protocol = Protocol(self.layout)
        self.parts = Partitions(config.pipeline, config.partitions)
        self.generation = new_generation()

    def enqueue_call(self, queue: str, job: NewJob) -> Call:
        """The call that enqueues one job, in its partition (no grouping to do for one)."""
        k = self.parts.index(job.id, job.unique_key)
        max_attempts = self.config.queue(queue).retry.max_attempts
        return self.parts.protocols[k].enqueue(queue, max_attempts, self.generation, (job,))

    def enqueue_calls(self, queue: str, batches: Sequence[Sequence[NewJob]]) -> list[RoutedCall]:
        """One enqueue call per batch and partition, each with the positions (in the order the
        jobs were given) of its jobs, so the ids can be put back in that order."""
        max_attempts = self.config.queue(queue).retry.max_attempts
        out: list[RoutedCall] = []
        offset = 0
        for batch in batches:
            by_part: dict[int, list[int]] = {}
            for i, job in enumerate(batch):
                by_part.setdefault(self.parts.index(job.id, job.unique_key), []).append(i)
            for k, positions in sorted(by_part.items()):
                jobs = [batch[i] for i in positions]
                call = self.parts.protocols[k].enqueue(queue, max_attempts, self.generation, jobs)
                out.append(RoutedCall(call, [offset + i for i in positions]))
            offset += len(batch)
        return out

    def build_job(self, queue: str, spec: JobSpec, run: str | None = None) -> NewJob:
        """Encode one job; ``run`` is the batch-run id for a spec that names none."""
        cfg = self.config.queue(queue)
        job_run = check_run_id(spec.run if spec.run is not None else run)
        args_json, kwargs_json = encode_payload(
            queue, spec.args, spec.kwargs, cfg.max_payload_bytes
        )
        if spec.job_id is not None:
            validate_job_id(spec.job_id)  # lone surrogates included
        if spec.unique_key:
            try:
                spec.unique_key.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: Redis must never get it
                raise PayloadError(
                    f"job for queue {queue!r}: unique_key {spec.unique_key!r} is not valid UTF-8"
                ) from None
        check_priority(spec.priority)
        return NewJob(
            id=spec.job_id or new_job_id(),
            args_json=args_json,
            kwargs_json=kwargs_json,
            when=when_field(spec.defer, spec.at),
            unique_key=spec.unique_key or "",
            priority=spec.priority,
            run=job_run,
        )

    def prepare(
        self,
        queue: str,
        specs: Iterable[JobSpec | Sequence[Any]],
        batch_size: int,
        run: str | None = None,
    ) -> list[RoutedCall]:
        """Every job validated and encoded (:meth:`build_batches`), then its enqueue calls
        (:meth:`enqueue_calls`), with the garbage collector held off (collector_paused)."""
        with collector_paused():
            return self.enqueue_calls(queue, self.build_batches(queue, specs, batch_size, run))

    def build_batches(
        self,
        queue: str,
        specs: Iterable[JobSpec | Sequence[Any]],
        batch_size: int,
        run: str | None = None,
    ) -> list[list[NewJob]]:
        """Validate and encode every job first, so a bad one means nothing is written."""
        max_bytes = self.config.queue(queue).max_payload_bytes
        default_run = check_run_id(run)
        jobs: list[NewJob] = []
        add = jobs.append
        for s in specs:
            if isinstance(s, JobSpec):
                add(self.build_job(queue, s, run))
            else:  # positional arguments only: the common bulk case, without a JobSpec
                args_json, _ = encode_payload(queue, s, None, max_bytes)
                add(NewJob(new_job_id(), args_json, "{}", "", "", "", 0, default_run))
        return [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]

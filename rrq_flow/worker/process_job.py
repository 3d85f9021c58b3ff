"""``executor: process``: the job's context inside the handler's process, and the way back.

The handler runs in a trio-parallel worker process. There ``current_job()`` returns a context
rebuilt from plain data (id, queue, attempt, epoch, deadline...), and ``ctx.logger`` sends its
records back to the worker over a Unix datagram socket, where they are logged with the job id
like a thread handler's. The same socket carries one "started" message per attempt: the job's
``timeout`` counts from there, so the time a process pool takes to start is never charged to a
job. Only JSON crosses the socket; the handler's arguments and result go through trio-parallel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import trio

from rrq_flow.logs import job_id_var
from rrq_flow.worker.context import GroupInfo, JobContext, OutboxJob, reset_current, set_current
from rrq_flow.worker.outcome import (
    UnstorableResult,
    cap_bytes,
    describe,
    encode_result,
    format_traceback,
    type_name,
    valid_utf8,
)

MAX_MESSAGE_BYTES = 16 * 1024  # of one log message sent back (a datagram must stay small)

Outbox = list[tuple[str, tuple[Any, ...], dict[str, Any], str | None]]  # (queue, args, kw, id)


class JobInfo(NamedTuple):
    """What the handler's process needs to know about its attempt (plain, picklable data).

    A NamedTuple, not a dataclass: it crosses to the pool with every job, and a tuple is built
    and pickled several times faster (issue 16, the process executor's per-job overhead)."""

    id: str
    queue: str
    attempt: int
    max_attempts: int
    epoch: int
    enqueued_at: float
    timeout: float
    worker_id: str
    parent: str | None
    server_offset: float  # server clock minus this host's wall clock, seconds
    channel: str  # the worker's datagram socket path
    max_result_bytes: int
    group: GroupInfo | None = None  # a join job's group (current_job().group)


class RemoteHandlerError(Exception):
    """What a process handler raised, when that exception cannot cross back as it is (a
    BaseException such as SystemExit, which would end the pool's process, or one that cannot
    be pickled). Records show the original type name, message and traceback."""

    def __init__(self, rrq_type: str, message: str, rrq_traceback: str):
        super().__init__(message)
        self.rrq_type, self.rrq_traceback = rrq_type, rrq_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteHandlerError, (self.rrq_type, str(self), self.rrq_traceback))


def _crossable(exc: BaseException) -> BaseException:
    """``exc`` itself if it can be sent back to the worker, else a RemoteHandlerError."""
    if isinstance(exc, Exception):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            pass
    return RemoteHandlerError(type_name(exc), describe(exc), format_traceback(exc))


class _SendBack(logging.Handler):
    """Sends each record of the job's logger back to the worker of the attempt running now
    (``info``; None between attempts: a record logged then, say by a thread the handler left
    behind, has no attempt to go to and is dropped)."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock = sock
        self.info: JobInfo | None = None

    def emit(self, record: logging.LogRecord) -> None:
        info = self.info
        if info is None:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            _send(
                self.sock,
                info,
                kind="log",
                level=record.levelno,
                name=record.name,
                message=cap_bytes(valid_utf8(message), MAX_MESSAGE_BYTES),
            )
        except Exception:
            self.handleError(record)


def _send(sock: socket.socket, info: JobInfo, **fields: Any) -> None:
    _send_bytes(sock, info, json.dumps({"job": info.id, "epoch": info.epoch, **fields}).encode())


def _send_bytes(sock: socket.socket, info: JobInfo, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the worker is gone: nobody to tell
        sock.sendto(data, info.channel)


def _start_message(info: JobInfo) -> bytes:
    """The "start" datagram (the same JSON as ``_send(kind="start")``, built without a dict)."""
    return b'{"job": %s, "epoch": %d, "kind": "start"}' % (json.dumps(info.id).encode(), info.epoch)


class _ProcessState:
    """What a pool process keeps from one job to the next: the socket to the workers and the
    job logger with its send-back handler (made once, not per job: a socket, a handler and a
    ``setLevel``, which clears every logger's cache, cost more than a no-op job itself)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sendback = _SendBack(self.sock)
        self.logger = logging.getLogger(f"rrq_flow.job.process.{self.pid}")
        self.logger.propagate = False
        self.logger.handlers[:] = [self.sendback]
        self.logger.setLevel(logging.DEBUG)


_state: _ProcessState | None = None


def _process_state() -> _ProcessState:
    global _state
    if _state is None or _state.pid != os.getpid():  # first job, or a forked copy
        _state = _ProcessState()
    return _state


def run_in_process(
    handler: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], info: JobInfo
) -> tuple[str | UnstorableResult, Outbox]:
    """Runs in the handler's process: announce the start, run with a context, return the
    result as JSON (or why it cannot be stored) and the attempt's outbox."""
    state = _process_state()
    state.sendback.info = info
    ctx = JobContext(
        id=info.id,
        queue=info.queue,
        attempt=info.attempt,
        max_attempts=info.max_attempts,
        epoch=info.epoch,
        enqueued_at=info.enqueued_at,
        deadline=time.time() + info.server_offset + info.timeout,
        worker_id=info.worker_id,
        parent=info.parent,
        logger=state.logger,
        group=info.group,
    )
    token = set_current(ctx)
    try:
        _send_bytes(state.sock, info, _start_message(info))
        try:
            result = handler(*args, **kwargs)
        except BaseException as exc:  # SystemExit & co. must not end the pool's process
            raise _crossable(exc) from None
        # Encoded here: an object that cannot be stored could not be pickled back either.
        try:
            encoded: str | UnstorableResult = encode_result(result, info.max_result_bytes)
        except UnstorableResult as exc:
            encoded = exc
        outbox = [(o.queue, o.args, o.kwargs, o.job_id) for o in ctx.outbox]
        if outbox:
            try:
                pickle.dumps(outbox)
            except Exception as exc:
                raise RemoteHandlerError(
                    "TypeError", f"current_job().enqueue() arguments: {describe(exc)}", ""
                ) from None
        return encoded, outbox
    finally:
        reset_current(token)
        state.sendback.info = None


def outbox_of(
    items: list[tuple[str, tuple[Any, ...], dict[str, Any], str | None]],
) -> list[OutboxJob]:
    return [OutboxJob(q, tuple(a), dict(k), j) for q, a, k, j in items]


class ProcessChannel:
    """The worker's end: a datagram socket its queue's handler processes report to."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="rrq-"))
        self.path = str(self._dir / "s")
        self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._started: dict[tuple[str, int], Callable[[], None]] = {}
        self._log = logging.getLogger("rrq_flow.job")

    async def open(self) -> None:
        await self._sock.bind(self.path)

    def on_start(self, job: tuple[str, int], callback: Callable[[], None]) -> None:
        """Call ``callback`` when the attempt ``job`` (id, epoch) starts in its process."""
        self._started[job] = callback

    def forget(self, job: tuple[str, int]) -> None:
        self._started.pop(job, None)

    async def serve(self) -> None:
        try:
            while True:
                data = await self._sock.recv(MAX_MESSAGE_BYTES + 4096)
                self._handle(data)
        finally:
            self._sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def _handle(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
            key = (str(msg["job"]), int(msg["epoch"]))
        except (ValueError, KeyError, TypeError):
            return
        if msg.get("kind") == "start":
            callback = self._started.pop(key, None)
            if callback is not None:
                callback()
            return
        token = job_id_var.set(key[0])
        try:
            level = msg.get("level")
            level = level if isinstance(level, int) else logging.INFO
            self._log.log(level, "%s", msg.get("message"), extra={"job_id": key[0]})
        finally:
            job_id_var.reset(token)


__all__ = ["JobInfo", "ProcessChannel", "RemoteHandlerError", "outbox_of", "run_in_process"]

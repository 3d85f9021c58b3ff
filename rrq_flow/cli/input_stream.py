"""JSON Lines files streamed into a queue (``rrq-flow run --input QUEUE=FILE`` and ``rrq-flow
enqueue PIPELINE QUEUE --jsonl FILE``): memory independent of the file's size.

Two passes over each file. The first checks every line exactly as the enqueue will encode it
(``ClientCore.build_job``) and keeps only a count and the first bad lines, so that one bad line
anywhere still means nothing is enqueued. The second reads the file again and enqueues it in
batches of ``CHUNK`` jobs through the client's public ``enqueue_many``. Standard input (``-``)
cannot be read twice: the first pass copies it (or any file that is not a regular file, such as
a pipe) to an unnamed temporary file.

A file that changes between the passes is refused before anything is written (its size, inode
or modification time differ); one that changes during the second pass stops the enqueue with a
message saying how many of its jobs are in.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from rrq_flow.cli._common import EXIT_USAGE, ExitWith, detail, error, open_jobs_file

CHUNK = 10_000  # jobs per enqueue_many call in the second pass: bounds the memory it uses


@dataclass
class InputFile:
    """One file after its first pass."""

    queue: str
    path: str  # as given ('-' for stdin)
    label: str  # how messages name it: "--input QUEUE=FILE" (run) or the path (enqueue)
    jobs: int  # good lines counted by the first pass
    stamp: tuple[int, int, int, int] | None  # (dev, inode, size, mtime_ns); None if spooled
    spool: IO[bytes] | None = field(default=None, repr=False)  # the copy of a stream
    priority: int = 0  # of the lines that set none (enqueue --priority)
    enqueued: int = 0  # jobs the second pass has enqueued so far

    def open(self) -> IO[bytes]:
        """The file for the second pass, refused if it is not the one the first pass read."""
        if self.spool is not None:
            self.spool.seek(0)
            return self.spool
        stream = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        if _stamp(stream) != self.stamp:
            stream.close()
            error(f"{self.label}: the file changed after it was checked; nothing was enqueued")
            raise ExitWith(EXIT_USAGE)
        return stream

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def _stamp(stream: IO[bytes]) -> tuple[int, int, int, int]:
    st = os.fstat(stream.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_inputs(items: list[str], config: Any) -> list[InputFile]:
    """First pass over every ``QUEUE=FILE`` of ``run --input``: exit 2 (nothing enqueued) on
    any bad line."""
    from rrq_flow.errors import UnknownQueueError

    checked: list[InputFile] = []
    try:
        for item in items:
            queue, sep, path = item.partition("=")
            if not sep or not queue or not path:
                error(f"--input {item!r}: expected QUEUE=FILE")
                raise ExitWith(EXIT_USAGE)
            try:
                config.queue(queue)
            except UnknownQueueError as exc:
                error(f"--input {item!r}: {exc}")
                raise ExitWith(EXIT_USAGE) from None
            try:
                stream = open_jobs_file(path)
            except OSError as exc:
                error(f"--input {item!r}: cannot read {path}: {exc.strerror}")
                raise ExitWith(EXIT_USAGE) from None
            with stream:
                checked.append(check_file(stream, config, queue, path, f"--input {queue}={path}"))
    except BaseException:
        for f in checked:
            f.close()
        raise
    return checked


def check_file(
    stream: IO[bytes],
    config: Any,
    queue: str,
    path: str,
    label: str,
    priority: int = 0,
    run: str | None = None,
) -> InputFile:
    """The first pass over one open file: every line encoded as the enqueue will encode it
    (``ClientCore.build_job``, with ``priority`` for lines that set none and ``run`` for lines
    that name none). Exit 2, the bad lines listed and nothing enqueued, if any line is bad."""
    from rrq_flow.client._core import ClientCore
    from rrq_flow.client.jsonl import BadLines, JsonlError, check_line

    core = ClientCore(config)

    def build(spec: Any) -> None:
        core.build_job(queue, spec, run)

    bad = BadLines(path)
    jobs = 0
    stamp: tuple[int, int, int, int] | None = _stamp(stream)
    spool = None
    if path == "-" or not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        stamp, spool = None, tempfile.TemporaryFile()  # noqa: SIM115 - InputFile.close
    try:
        for number, raw in enumerate(stream, start=1):
            if spool is not None:
                spool.write(raw)
            result = check_line(raw, priority, check=build)
            if isinstance(result, str):
                bad.add(number, result)
            elif result is not None:
                jobs += 1
        bad.raise_if_any()
    except JsonlError as exc:
        if spool is not None:
            spool.close()
        for line in str(exc).splitlines():
            detail(line)
        raise ExitWith(EXIT_USAGE) from None
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    return InputFile(queue, path, label, jobs, stamp, spool, priority)


def enqueue_inputs(client: Any, inputs: list[InputFile], run: str | None) -> None:
    """Second pass of ``run --input``: each checked file in batches of CHUNK jobs (one status
    line each).

    Redis errors propagate (the caller reports them, with ``InputFile.enqueued``).
    """
    for f in inputs:
        started = time.perf_counter()
        enqueue_file(client, f, run)
        elapsed = time.perf_counter() - started
        rate = f.enqueued / elapsed if elapsed > 0 else 0
        print(
            f"rrq-flow: enqueued {f.enqueued} job(s) into {f.queue} ({rate:,.0f}/s), run {run}",
            file=sys.stderr,
        )


def enqueue_file(
    client: Any,
    f: InputFile,
    run: str | None,
    on_batch: Callable[[list[str]], None] | None = None,
) -> None:
    """The second pass over one checked file: enqueued in batches of CHUNK jobs, each batch's
    ids (in the file's order) handed to ``on_batch`` once it is in. Closes the file.

    One batch is in flight (sent from a helper thread, which waits for Redis' answer with the
    GIL released) while the next is read and built: the reading and Redis' work overlap, as
    they did when one ``enqueue_many`` call sent the whole file. Batches go out, and are handed
    to ``on_batch``, in order. Redis errors propagate (the caller reports them, with
    ``f.enqueued``, which counts the batches Redis answered).
    """
    from rrq_flow.client.jsonl import check_line

    chunk: list[Any] = []
    number = 0
    in_flight: Future[None] | None = None

    def send(batch: list[Any], last_line: int) -> Future[None]:
        if in_flight is not None:
            in_flight.result()  # in order, one at a time; its error is raised here
        return sender.submit(_send, client, f, batch, last_line, run, on_batch)

    try:
        with f.open() as stream, ThreadPoolExecutor(1, "rrq-flow-enqueue") as sender:
            for number, raw in enumerate(stream, start=1):
                # Parsed only: enqueue_many encodes (and checks) each job once more anyway.
                result = check_line(raw, f.priority)
                if isinstance(result, str):
                    if in_flight is not None:
                        in_flight.result()  # so that the message counts it
                    raise _changed(f, number, result, run)
                if result is not None:
                    chunk.append(result)
                    if len(chunk) >= CHUNK:
                        in_flight = send(chunk, number)
                        chunk = []
            if chunk:
                in_flight = send(chunk, number)
            if in_flight is not None:
                in_flight.result()
    finally:
        f.close()


def _send(
    client: Any,
    f: InputFile,
    chunk: list[Any],
    number: int,
    run: str | None,
    on_batch: Callable[[list[str]], None] | None,
) -> None:
    from rrq_flow.errors import PayloadError

    try:
        ids = client.enqueue_many(f.queue, chunk, run=run)
    except (PayloadError, ValueError) as exc:
        raise _changed(f, number, str(exc), run) from None
    f.enqueued += len(chunk)
    if on_batch is not None:
        on_batch(ids)


def _changed(f: InputFile, number: int, problem: str, run: str | None) -> ExitWith:
    """A line the first pass accepted no longer is: the file changed under us."""
    error(
        f"{f.label}:{number}: {problem} (the file changed while being enqueued; "
        f"{f.enqueued} of its jobs were enqueued, run {run})"
    )
    return ExitWith(EXIT_USAGE)


__all__ = ["CHUNK", "InputFile", "check_file", "check_inputs", "enqueue_file", "enqueue_inputs"]

"""``rrq-flow run --input QUEUE=FILE``, streamed: memory independent of the file's size.

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
from dataclasses import dataclass, field
from typing import IO, Any

from rrq_flow.cli._common import EXIT_USAGE, ExitWith, detail, error, open_jobs_file

CHUNK = 10_000  # jobs per enqueue_many call in the second pass: bounds the memory it uses


@dataclass
class InputFile:
    """One ``--input`` after its first pass."""

    queue: str
    path: str  # as given ('-' for stdin)
    jobs: int  # good lines counted by the first pass
    stamp: tuple[int, int, int, int] | None  # (dev, inode, size, mtime_ns); None if spooled
    spool: IO[bytes] | None = field(default=None, repr=False)  # the copy of a stream
    enqueued: int = 0  # jobs the second pass has enqueued so far

    def open(self) -> IO[bytes]:
        """The file for the second pass, refused if it is not the one the first pass read."""
        if self.spool is not None:
            self.spool.seek(0)
            return self.spool
        stream = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        if _stamp(stream) != self.stamp:
            stream.close()
            error(
                f"--input {self.queue}={self.path}: the file changed after it was checked; "
                "nothing was enqueued"
            )
            raise ExitWith(EXIT_USAGE)
        return stream

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def _stamp(stream: IO[bytes]) -> tuple[int, int, int, int]:
    st = os.fstat(stream.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_inputs(items: list[str], config: Any) -> list[InputFile]:
    """First pass over every ``QUEUE=FILE``: exit 2 (nothing enqueued) on any bad line."""
    from rrq_flow.client._core import ClientCore
    from rrq_flow.client.jsonl import BadLines, JsonlError, check_line
    from rrq_flow.errors import UnknownQueueError

    core = ClientCore(config)
    checked: list[InputFile] = []
    try:
        for item in items:
            queue, sep, path = item.partition("=")
            if not sep or not queue or not path:
                error(f"--input {item!r}: expected QUEUE=FILE")
                raise ExitWith(EXIT_USAGE)
            try:
                cfg = config.queue(queue)
            except UnknownQueueError as exc:
                error(f"--input {item!r}: {exc}")
                raise ExitWith(EXIT_USAGE) from None
            try:
                stream = open_jobs_file(path)
            except OSError as exc:
                error(f"--input {item!r}: cannot read {path}: {exc.strerror}")
                raise ExitWith(EXIT_USAGE) from None
            bad = BadLines(path)
            jobs = 0

            def build(spec: Any, queue: str = queue) -> None:
                core.build_job(queue, spec)

            with stream:
                stamp: tuple[int, int, int, int] | None = _stamp(stream)
                spool = None
                if path == "-" or not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                    stamp, spool = None, tempfile.TemporaryFile()  # noqa: SIM115
                for number, raw in enumerate(stream, start=1):
                    if spool is not None:
                        spool.write(raw)
                    result = check_line(raw, queue, cfg.max_payload_bytes, check=build)
                    if isinstance(result, str):
                        bad.add(number, result)
                    elif result is not None:
                        jobs += 1
            checked.append(InputFile(queue, path, jobs, stamp, spool))
            try:
                bad.raise_if_any()
            except JsonlError as exc:
                for line in str(exc).splitlines():
                    detail(line)
                raise ExitWith(EXIT_USAGE) from None
    except BaseException:
        for f in checked:
            f.close()
        raise
    return checked


def enqueue_inputs(client: Any, inputs: list[InputFile], run: str | None) -> None:
    """Second pass: enqueue each checked file in batches of CHUNK jobs (one status line each).

    Redis errors propagate (the caller reports them, with ``InputFile.enqueued``).
    """
    for f in inputs:
        started = time.perf_counter()
        with f.open() as stream:
            _enqueue_file(client, f, stream, run)
        elapsed = time.perf_counter() - started
        rate = f.enqueued / elapsed if elapsed > 0 else 0
        print(
            f"rrq-flow: enqueued {f.enqueued} job(s) into {f.queue} ({rate:,.0f}/s), run {run}",
            file=sys.stderr,
        )


def _enqueue_file(client: Any, f: InputFile, stream: IO[bytes], run: str | None) -> None:
    from rrq_flow.client.jsonl import check_line

    max_bytes = client.config.queue(f.queue).max_payload_bytes
    chunk: list[Any] = []
    number = 0
    for number, raw in enumerate(stream, start=1):
        result = check_line(raw, f.queue, max_bytes)
        if isinstance(result, str):
            raise _changed(f, number, result, run)
        if result is not None:
            chunk.append(result)
            if len(chunk) >= CHUNK:
                _send(client, f, chunk, number, run)
                chunk = []
    if chunk:
        _send(client, f, chunk, number, run)


def _send(client: Any, f: InputFile, chunk: list[Any], number: int, run: str | None) -> None:
    from rrq_flow.errors import PayloadError

    try:
        client.enqueue_many(f.queue, chunk, run=run)
    except (PayloadError, ValueError) as exc:
        raise _changed(f, number, str(exc), run) from None
    f.enqueued += len(chunk)


def _changed(f: InputFile, number: int, problem: str, run: str | None) -> ExitWith:
    """A line the first pass accepted no longer is: the file changed under us."""
    error(
        f"--input {f.queue}={f.path}:{number}: {problem} (the file changed while being "
        f"enqueued; {f.enqueued} of its jobs were enqueued, run {run})"
    )
    return ExitWith(EXIT_USAGE)


__all__ = ["CHUNK", "InputFile", "check_inputs", "enqueue_inputs"]

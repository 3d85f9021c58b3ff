"""Logging with the worker id, queue and job id on every record, in text or JSON.

The ids live in context variables set by the worker (per task, copied into handler threads by
trio), and a filter copies them onto each record, so any logger — the handler's own included —
is tagged without passing anything around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Literal

from rrq_flow.textsafe import printable

worker_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("rrq_worker_id", default="")
queue_var: contextvars.ContextVar[str] = contextvars.ContextVar("rrq_queue", default="")
job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("rrq_job_id", default="")

LogFormat = Literal["text", "json"]


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__["worker_id"] = worker_id_var.get()
        record.__dict__["queue"] = queue_var.get()
        record.__dict__["job_id"] = job_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tags = []
        for attr, tag in (("worker_id", "worker"), ("queue", "queue"), ("job_id", "job")):
            value = getattr(record, attr, "")
            if value:
                tags.append(f"{tag}={printable(value)}")
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{' '.join(tags)}] "
        # One record, one line: a message from handler data cannot forge lines or drive the
        # terminal. A traceback keeps its lines, with everything else escaped.
        line += printable(record.getMessage())
        if record.exc_info:
            line += "\n" + printable(self.formatException(record.exc_info), newlines=True)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "worker_id": getattr(record, "worker_id", ""),
            "queue": getattr(record, "queue", ""),
            "job_id": getattr(record, "job_id", ""),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


JOBS_LOGGER = "rrq_flow.jobs"
"""One INFO line per finished job (id, queue, outcome, duration), as RQ's worker logs them: shown
when the level is asked for explicitly (``--log-level INFO``), quiet by default."""


def setup_logging(fmt: LogFormat = "text", level: str | None = None) -> None:
    """Configure the root logger for a worker or supervisor process (stderr).

    ``level`` None means the default: INFO, except the per-job lines of :data:`JOBS_LOGGER`.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "INFO").upper())
    logging.getLogger(JOBS_LOGGER).setLevel(logging.WARNING if level is None else logging.NOTSET)
    # coredis logs each connection retry (INFO) and each failed handshake (ERROR, with the
    # server's address but no cause); rrq-flow reports connection problems itself, once, with
    # the cause (authentication, permission, certificate) and the URL's password hidden.
    logging.getLogger("coredis").setLevel(max(logging.CRITICAL, root.level))

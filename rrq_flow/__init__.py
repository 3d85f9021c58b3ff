"""rrq-flow: declarative batch pipelines on trio and Redis that do not lose work.

Producer side::

    import rrq_flow
    with rrq_flow.load("pipeline.yaml").sync_client() as client:
        job_id = client.enqueue("fetch", "https://example.com/a.png")

Handler side: ``rrq_flow.current_job()`` for the running job's context, ``raise
rrq_flow.Retry(delay="10s")`` to retry later, ``raise rrq_flow.Fatal("why")`` to dead-letter now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rrq_flow._version import __version__
from rrq_flow.config.model import PipelineConfig, QueueConfig
from rrq_flow.errors import (
    ConfigError,
    DataLossDetected,
    DurabilityError,
    Fatal,
    JobFailed,
    JobNotFound,
    PayloadError,
    RedisUnavailable,
    Retry,
    RRQFlowError,
    RunNotFound,
    UnknownQueueError,
)
from rrq_flow.worker.context import JobContext, current_job

if TYPE_CHECKING:
    from rrq_flow.client._core import JobSpec
    from rrq_flow.client.async_client import Client
    from rrq_flow.client.jobinfo import JobInfo
    from rrq_flow.client.sync_client import SyncClient
    from rrq_flow.config import load

_LAZY = {
    "Client": "rrq_flow.client.async_client",
    "SyncClient": "rrq_flow.client.sync_client",
    "JobInfo": "rrq_flow.client.jobinfo",
    "JobSpec": "rrq_flow.client._core",
    "load": "rrq_flow.config",
}


def __getattr__(name: str) -> Any:
    # Clients pull in Redis libraries; import them on first use so `import rrq_flow` stays light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rrq_flow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Client",
    "ConfigError",
    "DataLossDetected",
    "DurabilityError",
    "Fatal",
    "JobContext",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobSpec",
    "PayloadError",
    "PipelineConfig",
    "QueueConfig",
    "RRQFlowError",
    "RedisUnavailable",
    "Retry",
    "RunNotFound",
    "SyncClient",
    "UnknownQueueError",
    "__version__",
    "current_job",
    "load",
]

"""Pipeline configuration: load a ``pipeline.yaml``, check it, and return the typed model."""

from rrq_flow.config.model import (
    PipelineConfig,
    QueueConfig,
    RedisSettings,
    RetryPolicy,
    WorkersConfig,
)

__all__ = [
    "PipelineConfig",
    "QueueConfig",
    "RedisSettings",
    "RetryPolicy",
    "WorkersConfig",
]

"""rrq-flow: declarative batch pipelines on trio and Redis that do not lose work."""

from rrq_flow._version import __version__
from rrq_flow.config.model import PipelineConfig, QueueConfig
from rrq_flow.errors import Fatal, Retry

__all__ = ["Fatal", "PipelineConfig", "QueueConfig", "Retry", "__version__"]

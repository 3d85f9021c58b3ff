"""Pipeline configuration: load a ``pipeline.yaml``, check it, and return the typed model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rrq_flow.config.durations import parse_duration
from rrq_flow.config.loader import document_from_dict
from rrq_flow.config.model import (
    PipelineConfig,
    QueueConfig,
    RedisSettings,
    RetryPolicy,
    WorkersConfig,
)
from rrq_flow.config.validate import check, check_file
from rrq_flow.errors import ConfigError, Problem

__all__ = [
    "PipelineConfig",
    "QueueConfig",
    "RedisSettings",
    "RetryPolicy",
    "WorkersConfig",
    "from_dict",
    "load",
    "parse_duration",
    "validate_file",
]


def load(path: str | os.PathLike[str], *, check_imports: bool = False) -> PipelineConfig:
    """Load and check a pipeline file; ``source`` of the result is the resolved path.

    Raises ConfigUsageError when the file cannot be read or is not YAML, ConfigError (with every
    problem) when it is invalid.
    """
    result = check_file(path, check_imports=check_imports)
    if result.config is None:
        raise ConfigError(result.problems)
    return result.config


def validate_file(path: str | os.PathLike[str], *, check_imports: bool = True) -> list[Problem]:
    """Every problem in a pipeline file, in file order (empty when valid)."""
    return check_file(path, check_imports=check_imports).problems


def from_dict(
    data: Mapping[str, Any], *, source: Path | None = None, check_imports: bool = False
) -> PipelineConfig:
    """Check and build a pipeline from data built in code (no ``${VAR}`` substitution).

    Problems are located at ``<dict>:0:0``. Handlers are imported (with ``check_imports``) with
    ``source``'s directory, if given, and the current directory on ``sys.path``.
    """
    search = [*([source.parent] if source is not None else []), Path.cwd()]
    result = check(
        document_from_dict(data), check_imports=check_imports, source=source, search_paths=search
    )
    if result.config is None:
        raise ConfigError(result.problems)
    return result.config

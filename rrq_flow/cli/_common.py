"""Helpers shared by the CLI commands: load a pipeline or explain why not, print JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rrq_flow.config.model import PipelineConfig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REDIS = 3


def add_pipeline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", type=Path, help="the pipeline.yaml file")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def error(message: str) -> None:
    """One line on stderr, prefixed so it is clear who speaks."""
    print(f"rrq-flow: {message}", file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


class ExitWith(Exception):
    """Raised inside a command to stop with an exit code after its message was printed."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def load_pipeline(path: Path, *, check_imports: bool = False) -> PipelineConfig:
    """Load the pipeline, or print every problem and raise ExitWith(2)."""
    from rrq_flow.config import load
    from rrq_flow.errors import ConfigError, ConfigUsageError

    try:
        return load(path, check_imports=check_imports)
    except ConfigUsageError as exc:
        error(str(exc))
        raise ExitWith(EXIT_USAGE) from None
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        error(f"{path}: {len(exc.problems)} problem(s); run `rrq-flow validate {path}`")
        raise ExitWith(EXIT_USAGE) from None


def redis_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "Redis is not reachable, or refuses us" for the sync client."""
    import redis

    return (
        redis.exceptions.ConnectionError,  # AuthenticationError too
        redis.exceptions.TimeoutError,
        redis.exceptions.NoPermissionError,
        OSError,
    )


def redis_failure(exc: BaseException, url: str) -> str:
    """One line for a Redis failure (auth, permission, TLS, unreachable), password hidden."""
    from rrq_flow.connection_errors import explain

    return explain(exc, url)


def open_sync_client(config: PipelineConfig) -> Any:
    """A SyncClient that answers PING, or print why not and raise ExitWith(3)."""
    from rrq_flow.client.sync_client import SyncClient
    from rrq_flow.errors import EmbeddedRedisError

    try:
        client = SyncClient(config, fail_fast=True)
    except EmbeddedRedisError as exc:
        error(str(exc))
        raise ExitWith(EXIT_REDIS) from None
    try:
        client.redis.ping()
    except redis_errors() as exc:
        client.close()
        error(redis_failure(exc, client.url))
        raise ExitWith(EXIT_REDIS) from None
    return client


def parse_duration_arg(value: str) -> float:
    """argparse type for durations ("90", "1m30s")."""
    from rrq_flow.config.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

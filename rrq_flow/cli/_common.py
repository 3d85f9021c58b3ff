"""Helpers shared by the CLI commands: load a pipeline or explain why not, print JSON.

Every failure is told once: :func:`error` prints one line on stderr and remembers it, and when a
command given ``--json`` fails without having printed its own JSON, :func:`finish` prints
``{"error": "...", "exit_code": N}`` on stdout so that scripts always get an object to read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

from rrq_flow.config.model import PipelineConfig
from rrq_flow.textsafe import printable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REDIS = 3


def add_pipeline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", type=Path, help="the pipeline.yaml file")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


class _Told:
    """What the running command has said so far (reset by :func:`begin` for every command)."""

    errors: list[str] = []
    details: list[str] = []
    printed_json = False


def begin() -> None:
    """Forget what an earlier command said (``main`` can run several in one process)."""
    _Told.errors, _Told.details, _Told.printed_json = [], [], False


def note_error(message: str) -> None:
    """Remember an error that was already printed (argparse prints its own)."""
    _Told.errors.append(message)


def error(message: str) -> None:
    """One line on stderr, prefixed so it is clear who speaks."""
    note_error(message)
    print(f"rrq-flow: {printable(message)}", file=sys.stderr)


def detail(line: object) -> None:
    """A line that explains a failure (a problem, a bad input line), printed as it is."""
    _Told.details.append(str(line))
    print(printable(line), file=sys.stderr)


def print_json(data: Any) -> None:
    _Told.printed_json = True
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def error_object(code: int) -> dict[str, Any]:
    """``{"error": ..., "exit_code": N}`` for what the command told on stderr (plus details)."""
    message = "; ".join(_Told.errors) or (_Told.details[-1] if _Told.details else "failed")
    data: dict[str, Any] = {"error": message, "exit_code": code}
    if _Told.details:
        data["details"] = list(_Told.details)
    return data


def finish(code: int, *, as_json: bool) -> int:
    """Print the JSON error object when a ``--json`` command failed without printing JSON."""
    if as_json and code != EXIT_OK and not _Told.printed_json:
        print_json(error_object(code))
    return code


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
            detail(problem)
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


def redis_refusals() -> tuple[type[BaseException], ...]:
    """Error replies to the sync client (OOM, MISCONF, a script error...): Redis answered, and
    refused the call."""
    import redis

    return (redis.exceptions.ResponseError,)


def redis_refusal(exc: BaseException) -> str:
    """One line for an error reply, with what to do about the common ones (OOM, MISCONF...)."""
    from rrq_flow.redis_errors import explain

    return f"Redis refused the call: {explain(exc)}"


def redis_failure(exc: BaseException, url: str) -> str:
    """One line for a Redis failure (auth, permission, TLS, unreachable), password hidden."""
    from rrq_flow.connection_errors import explain

    return explain(exc, url)


def open_sync_client(config: PipelineConfig, url: str | None = None) -> Any:
    """A SyncClient whose user may run every command rrq-flow sends, or print why not and
    raise ExitWith(3) (2 for unusable redis settings)."""
    from rrq_flow.client.sync_client import SyncClient
    from rrq_flow.errors import EmbeddedRedisError, RedisSettingsError

    try:
        client = SyncClient(config, url=url, fail_fast=True)
    except EmbeddedRedisError as exc:
        error(str(exc))
        raise ExitWith(EXIT_REDIS) from None
    except RedisSettingsError as exc:
        error(str(exc))
        raise ExitWith(EXIT_USAGE) from None
    try:
        check_access(client)
    except BaseException:
        client.close()
        raise
    return client


def check_access(client: Any) -> None:
    """PING, then ask Redis which needed commands the user lacks (rrq_flow.acl); print the
    reason (authentication, permission, TLS, unreachable) and raise ExitWith(3) on failure."""
    from rrq_flow.acl import denial_message, missing_commands_sync
    from rrq_flow.connection_errors import user_of

    try:
        client.redis.ping()
        missing = missing_commands_sync(client.redis, client.config.pipeline)
    except redis_errors() as exc:
        error(redis_failure(exc, client.url))
        raise ExitWith(EXIT_REDIS) from None
    if missing:
        error(denial_message(user_of(client.url), missing, client.config.pipeline))
        raise ExitWith(EXIT_REDIS)


def open_jobs_file(path: str) -> BinaryIO:
    """A JSON Lines file (``-``: stdin) in binary mode, so that each line's UTF-8 is checked
    with its line number instead of failing half-way through reading (OSError if unreadable)."""
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def parse_run_arg(value: str) -> str:
    """argparse type for a batch-run id."""
    from rrq_flow.runs import check_run_id

    try:
        return check_run_id(value) or _empty_run()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _empty_run() -> str:
    raise ValueError("run id must not be empty")


def parse_duration_arg(value: str) -> float:
    """argparse type for durations ("90", "1m30s")."""
    from rrq_flow.config.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

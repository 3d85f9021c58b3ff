"""Shared fixtures: a real redis-server started by the suite (never a fake), on a unix socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from rrq_flow.config.model import (
    PipelineConfig,
    QueueConfig,
    RedisSettings,
    RetryPolicy,
    WorkersConfig,
)
from rrq_flow.redis_server import RedisServerProcess, start_redis_server
from rrq_flow.worker.worker import Worker

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServerProcess]:
    # A short directory: unix socket paths are limited to ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="rrqt-"))
    # AOF on, as `rrq-flow run` requires (redis.persistence: aof); everysec costs the suite little.
    server = start_redis_server(base, unix_socket=base / "r.sock", appendonly=True)
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> str:
    """The URL of the suite's redis-server, emptied for this test."""
    r = redis.Redis(unix_socket_path=str(redis_server.unix_socket))
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture
def sync_redis(redis_url: str, redis_server: RedisServerProcess) -> Iterator[redis.Redis]:
    r = redis.Redis(unix_socket_path=str(redis_server.unix_socket), decode_responses=True)
    yield r
    r.close()


def make_queue(name: str, handler: str = "tests.handlers:echo", **kw: Any) -> QueueConfig:
    retry = kw.pop("retry", None)
    if isinstance(retry, dict):
        retry = RetryPolicy(**retry)
    return QueueConfig(name=name, handler=handler, retry=retry or RetryPolicy(), **kw)


def make_pipeline(
    redis_url: str,
    *queues: QueueConfig,
    name: str = "t",
    workers: WorkersConfig | None = None,
) -> PipelineConfig:
    """A pipeline built in code (no YAML) pointing at the test Redis."""
    qs = queues or (make_queue("q"),)
    return PipelineConfig(
        pipeline=name,
        queues={q.name: q for q in qs},
        redis=RedisSettings(url=redis_url, connect_timeout=2, command_timeout=5),
        workers=workers or WorkersConfig(heartbeat_interval=0.5, shutdown_grace_period=2),
    )


async def run_burst(cfg: PipelineConfig, **kw: Any) -> tuple[Worker, int]:
    """Run an in-process worker in burst mode until the queues drain (60 s at most)."""
    worker = Worker(cfg, url=str(cfg.redis.url), burst=True, handle_signals=False, **kw)
    with trio.fail_after(60):
        code = await worker.run()
    return worker, code

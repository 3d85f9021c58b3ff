"""What `rrq-flow run` checks about the Redis it is given, with real redis-servers.

A Redis without AOF (RDB snapshots only) rolls back to its last snapshot when it crashes: the
generation id is in the snapshot, so the loss cannot be seen afterwards. The RDB scenario of
issue 10 is reproduced here to show both halves of the documented behaviour: `run` refuses such
a Redis by default, and with `redis.persistence: none` the loss happens and is NOT detected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.errors import JobNotFound
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.redis_server import RedisServerProcess, start_redis_server
from tests.test_cli_run import cli

QUEUES = "queues:\n  q: {handler: 'tests.handlers:echo'}\n"


def write(tmp_path: Path, url: str, redis_extra: str = "", name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'version: 1\npipeline: t\nredis: {{url: "{url}", connect_timeout: 2s{redis_extra}}}\n'
        "workers: {heartbeat_interval: 500ms, shutdown_grace_period: 2s}\n" + QUEUES
    )
    return path


@pytest.fixture
def servers() -> Iterator[list[RedisServerProcess]]:
    """Servers a test starts; all are killed at the end."""
    started: list[RedisServerProcess] = []
    yield started
    for server in started:
        server.kill()


def test_rdb_only_redis_is_refused_and_its_rollback_is_not_detected_when_accepted(
    tmp_path: Path, servers: list[RedisServerProcess]
) -> None:
    data = tmp_path / "redis"
    server = start_redis_server(data, appendonly=False)  # RDB only: `SAVE` writes dump.rdb
    servers.append(server)
    strict = write(tmp_path, server.url)

    # By default `run` refuses to start on it: one line, exit 2, JSON error object.
    out = cli("run", str(strict), "--burst", "--progress", "off", "--json")
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"rrq-flow: Redis at {server.url} does not persist with AOF")
    assert "'redis: {persistence: none}'" in line

    # Accepting the risk: SAVE, enqueue 5, SIGKILL, restart from the RDB.
    accepted = write(tmp_path, server.url, ", persistence: none", "accepted.yaml")
    config = load(accepted)
    meta = KeyLayout("t").meta
    with SyncClient(config) as client:
        kept = client.enqueue("q", "before the snapshot")
        r: redis.Redis = client.redis
        generation = r.hget(meta, "generation")
        assert generation
        r.save()
        lost = [client.enqueue("q", i) for i in range(5)]  # acknowledged
    server.kill()  # SIGKILL: no final snapshot
    server = start_redis_server(data, port=server.port, appendonly=False)
    servers.append(server)

    with SyncClient(config) as client:
        assert client.redis.hget(meta, "generation") == generation  # unchanged: no sign of loss
        assert client.job(kept).status == "queued"
        for job_id in lost:
            with pytest.raises(JobNotFound):
                client.job(job_id)
    out = cli("run", str(accepted), "--burst", "--progress", "off", "--json")
    assert out.returncode == 0, out.stderr  # the worker runs the one job left, and says nothing
    assert json.loads(out.stdout)["finished"] == 1
    assert "lost" not in out.stderr.lower()


@pytest.mark.slow  # two runs, one with a supervisor of two processes
def test_eviction_policy_warns_once_and_a_user_without_info_is_not_refused(
    tmp_path: Path, servers: list[RedisServerProcess]
) -> None:
    server = start_redis_server(
        tmp_path / "redis", extra_args=["--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"]
    )
    servers.append(server)
    path = write(tmp_path, server.url)
    with SyncClient(load(path)) as client:
        client.enqueue_many("q", [[i] for i in range(4)])
    out = cli("run", str(path), "--burst", "--processes", "2", "--progress", "off")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "maxmemory-policy" in line]
    assert len(warnings) == 1, out.stderr  # once per run, not once per worker process
    assert "has maxmemory-policy allkeys-lru (maxmemory 1.00G)" in warnings[0]
    assert "WARNING" in warnings[0]

    # A user that may not run INFO (as on some managed services): a warning, not a refusal.
    admin = redis.Redis(port=server.port)
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+s3cret-pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    admin.close()
    port = server.port
    limited = write(tmp_path, f"redis://worker:s3cret-pw@127.0.0.1:{port}/0", name="acl.yaml")
    with SyncClient(load(limited)) as client:
        client.enqueue("q", "x")
    out = cli("run", str(limited), "--burst", "--progress", "off")
    assert out.returncode == 0, out.stderr
    assert "(INFO is not permitted for this user): make sure it persists with AOF" in out.stderr
    assert "s3cret-pw" not in out.stderr

"""``redis.tls`` on redis-server's own TLS port, with a CA this test makes with openssl.

The right certificate works for every command and a worker (the server also demands a client
certificate: ``tls-auth-clients yes``); a certificate signed by the same CA for another host
name is refused by every command and the worker with exit 3 and a message naming the problem.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from rrq_flow.cli import main
from rrq_flow.client.lean_connection import lean_connections_for
from rrq_flow.config.model import RedisSettings, TLSSettings
from rrq_flow.connection import open_async_redis, open_sync_redis
from rrq_flow.protocol.scripts import script
from rrq_flow.worker.wake_connection import wake_connection_for
from tests.tls_support import Certs, make_certs, start_tls_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


class TLSServers:
    def __init__(self, base: Path):
        self.base = base
        self.certs: Certs = make_certs(base / "certs")
        self.good, self.port = start_tls_server(base / "good", self.certs, auth_clients="yes")
        self.evil, self.evil_port = start_tls_server(base / "evil", self.certs, evil=True)

    def stop(self) -> None:
        self.good.stop()
        self.evil.stop()


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSServers]:
    base = Path(tempfile.mkdtemp(prefix="rrqtls-"))
    try:
        servers = TLSServers(base)
    except Exception as exc:  # a redis-server built without TLS
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot start redis-server with TLS: {exc}")
    yield servers
    servers.stop()
    shutil.rmtree(base, ignore_errors=True)


def _pipeline(tmp_path: Path, port: int, tls_yaml: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis:
  url: "rediss://127.0.0.1:{port}/0"
  connect_timeout: 2s
  tls: {tls_yaml}
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s}}
queues:
  ok: {{handler: 'tests.handlers:echo'}}
  bad: {{handler: 'tests.handlers:always_fail', retry: {{max_attempts: 1}}}}
"""
    )
    return path


def _client_tls(certs: Certs) -> str:
    files = f"cert_file: '{certs.client_cert}', key_file: '{certs.client_key}'"
    return f"{{ca_file: '{certs.ca}', {files}}}"


def _cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _every_command(p: Path, job: str) -> list[tuple[str | Path, ...]]:
    return [
        ("enqueue", p, "ok", "--args", "[1]"),
        ("status", p),
        ("workers", p),
        ("job", p, job),
        ("cancel", p, job),
        ("dlq", "list", p),
        ("dlq", "show", p, job),
        ("dlq", "requeue", p, "--all", "--dry-run"),
        ("dlq", "purge", p, "--yes"),
        ("health", p),
        ("run", p, "--burst", "--progress", "off"),
    ]


@pytest.mark.slow
def test_the_right_certificate_works_for_every_command_and_a_worker(
    tls: TLSServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _pipeline(tmp_path, tls.port, _client_tls(tls.certs))
    code, out, err = _cli(capsys, "enqueue", p, "ok", "--args", "[1]")
    assert code == 0, err
    job = out.strip()
    code, out, err = _cli(capsys, "enqueue", p, "bad", "--args", "[1]")
    assert code == 0, err
    dead = out.strip()
    code, _, err = _cli(capsys, "run", p, "--burst", "--progress", "off")
    assert code == 1, err  # "bad" was dead-lettered: the worker ran both jobs over TLS
    code, out, err = _cli(capsys, "job", p, job, "--json")
    assert code == 0 and '"done"' in out, err
    for args in _every_command(p, dead):
        code, out, err = _cli(capsys, *args)
        assert code in (0, 1), (args, code, err)
        assert "certificate" not in err and "cannot reach" not in err, (args, err)


@pytest.mark.slow
def test_a_certificate_for_another_host_is_refused_everywhere(
    tls: TLSServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _pipeline(tmp_path, tls.evil_port, f"{{ca_file: '{tls.certs.ca}'}}")
    for args in _every_command(p, "some-job"):
        code, out, err = _cli(capsys, *args)
        assert code == 3, (args, code, out, err)
        assert "TLS certificate problem" in err and "not valid for '127.0.0.1'" in err, (args, err)
        assert "Traceback" not in err


@pytest.mark.slow
def test_a_server_demanding_client_certificates_refuses_a_client_without_one(
    tls: TLSServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _pipeline(tmp_path, tls.port, f"{{ca_file: '{tls.certs.ca}'}}")
    for args in (("status", p), ("run", p, "--burst", "--progress", "off")):
        code, _, err = _cli(capsys, *args)
        assert code == 3, (args, err)
        assert "Traceback" not in err


def test_every_connection_kind_checks_the_host_name(tls: TLSServers) -> None:
    """The async client (and its lean connection), the sync client and the idle wait's
    connection all refuse the certificate for evil.example.com (coredis' own ssl=True used to
    accept it)."""
    certs = tls.certs
    settings = RedisSettings(
        connect_timeout=2,
        tls=TLSSettings(
            ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key)
        ),
    )
    evil = f"rediss://127.0.0.1:{tls.evil_port}/0"
    good = f"rediss://127.0.0.1:{tls.port}/0"
    with open_sync_redis(good, settings) as r:
        assert r.ping()
    once = {"retry": Retry(NoBackoff(), 0)}
    with open_sync_redis(evil, settings, **once) as r, pytest.raises(Exception, match="mismatch"):
        r.ping()

    async def async_ping(url: str) -> object:
        async with open_async_redis(url, settings) as r:
            return await r.ping()

    async def wake(url: str) -> object:
        conn = wake_connection_for(url, settings)
        try:
            return await conn.wait_then_claim(["k"], 0.01, script("claim"), ["k"], [])
        finally:
            await conn.aclose()

    async def lean_ping(url: str) -> object:
        pool = lean_connections_for(url, settings)
        conn = pool and pool.free()
        assert conn is not None
        try:
            return await conn.call("PING")
        finally:
            await conn.aclose()

    assert trio.run(async_ping, good) == "PONG"
    assert trio.run(lean_ping, good) == "PONG"
    with pytest.raises(BaseException) as refused:
        trio.run(lean_ping, evil)
    assert "mismatch" in repr(_causes(refused.value))
    with pytest.raises(BaseException) as refused:
        trio.run(async_ping, evil)
    assert "mismatch" in repr(_causes(refused.value))
    with pytest.raises(BaseException) as refused:
        trio.run(wake, evil)
    assert "mismatch" in repr(_causes(refused.value))
    # verify: false turns checking off (for tests and broken set-ups only)
    lax = RedisSettings(
        connect_timeout=2,
        tls=TLSSettings(
            verify=False, cert_file=settings.tls.cert_file, key_file=settings.tls.key_file
        ),
    )
    with open_sync_redis(evil, lax) as r:
        assert r.ping()


def _causes(exc: BaseException) -> list[BaseException]:
    from rrq_flow.connection_errors import _chain

    return list(_chain(exc))


def test_validate_checks_tls_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _pipeline(tmp_path, 1, "{ca_file: missing.pem, cert_file: c.pem, verify: maybe}")
    code, out, _ = _cli(capsys, "validate", p, "--no-imports")
    assert code == 1
    assert "redis.tls.verify" in out
    p = _pipeline(tmp_path, 1, "{ca_file: missing.pem, cert_file: c.pem}")
    code, out, _ = _cli(capsys, "validate", p, "--no-imports")
    assert code == 1
    assert "redis.tls.ca_file: cannot read" in out and "missing.pem" in out
    assert "redis.tls.cert_file: cert_file needs key_file as well" in out
    p.write_text(p.read_text().replace("rediss://", "redis://"))
    code, out, _ = _cli(capsys, "validate", p, "--no-imports")
    assert "redis.tls: TLS settings need a rediss:// url" in out

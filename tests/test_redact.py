"""A URL's password is never shown: one redaction function, used by every message."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrq_flow.cli import main
from rrq_flow.connection_errors import explain
from rrq_flow.redact import redact_url, scrub

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6411/0", "redis://:***@127.0.0.1:6411/0"),
        (f"rediss://app:{SECRET}@redis.internal:6380/2", "rediss://app:***@redis.internal:6380/2"),
        (f"redis://app:{SECRET}@h:notaport/x", "redis://app:***@h:notaport/x"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///tmp/r.sock?db=1", "unix:///tmp/r.sock?db=1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrub_removes_the_password_from_any_text() -> None:
    url = f"redis://app:{SECRET}@h:1/0"
    text = scrub(f"failed on {url} (password {SECRET})", url)
    assert SECRET not in text and "redis://app:***@h:1/0" in text


def test_explain_names_the_cause_without_the_password() -> None:
    import redis

    url = f"redis://app:{SECRET}@h:1/0"
    auth = explain(redis.exceptions.AuthenticationError("invalid username-password pair"), url)
    assert auth.startswith("authentication failed for user 'app' at redis://app:***@h:1/0")
    denied = explain(
        redis.exceptions.NoPermissionError(
            "this user has no permissions to run the 'blpop' command or its subcommand"
        ),
        url,
    )
    assert denied == "permission denied: user 'app' lacks BLPOP"
    down = explain(redis.exceptions.ConnectionError(f"Error 111 connecting {url}"), url)
    assert down.startswith("cannot reach Redis at redis://app:***@h:1/0") and SECRET not in down


@pytest.mark.parametrize("url", [f"http://u:{SECRET}@h:1/0", f"redis://u:{SECRET}@h:port/0"])
def test_validate_never_echoes_a_password(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f'version: 1\npipeline: t\nredis: {{url: "{url}"}}\nqueues: {{a: {{handler: "m:f"}}}}\n'
    )
    for extra in ((), ("--json",)):
        code = main(["validate", str(path), "--no-imports", *extra])
        out, err = capsys.readouterr()
        assert code == 1, (out, err)
        assert "redis.url" in out and SECRET not in out + err, (out, err)


def test_a_start_up_failure_says_which_kind_it_is_without_the_password() -> None:
    """A worker that cannot use Redis at start names the kind in its summary: access denied,
    refused (any other error reply, as the logged line says), or unreachable. The message never
    carries the password."""
    import coredis.exceptions

    from rrq_flow.connection_errors import (
        RedisAccessDenied,
        RedisRefused,
        stop_reason,
        unusable,
    )
    from rrq_flow.errors import RedisUnavailable

    url = f"redis://app:{SECRET}@h:1/0"
    cases = [
        (coredis.exceptions.AuthenticationFailureError("WRONGPASS"), "Redis denied access"),
        (
            coredis.exceptions.ResponseError("NOPERM no permissions to run 'hset'"),
            "Redis denied access",
        ),
        (coredis.exceptions.ResponseError("OOM command not allowed"), "Redis refused the call"),
        (coredis.exceptions.ResponseError("READONLY You can't write"), "Redis refused the call"),
        (coredis.exceptions.ResponseError("LOADING Redis is loading"), "Redis refused the call"),
        (coredis.exceptions.ConnectionError(f"Error 111 connecting {url}"), "Redis unreachable"),
    ]
    for exc, reason in cases:
        error = unusable(exc, url)
        assert isinstance(error, RedisUnavailable) and stop_reason(error) == reason, (exc, error)
        assert SECRET not in str(error)
    assert isinstance(unusable(cases[0][0], url), RedisAccessDenied)
    assert isinstance(unusable(cases[2][0], url), RedisRefused)

"""``${VAR}`` substitution: the function itself, and how it applies inside pipeline files."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from rrq_flow.config import from_dict, load, validate_file
from rrq_flow.config.envsubst import substitute
from rrq_flow.errors import ConfigError

ENV = {"A": "alpha", "EMPTY": "", "N": "3"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "alpha"),
        ("x-${A}-y", "x-alpha-y"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY}", ""),
        ("${A:-fallback}", "alpha"),
        ("${MISSING:-}", ""),
        ("${MISSING:-a b:c}", "a b:c"),
        ("$$", "$"),
        ("$${A}", "${A}"),
        ("$$${A}", "$alpha"),
        ("$$$${A}", "$${A}"),
        ("costs $5", "costs $5"),
        ("no refs", "no refs"),
    ],
)
def test_substitute(text: str, expected: str) -> None:
    result = substitute(text, ENV)
    assert result.errors == []
    assert result.value == expected


def test_unset_variable_is_an_error_naming_it() -> None:
    result = substitute("${A}/${NOPE}", ENV)
    assert result.errors == [
        "environment variable 'NOPE' is not set (write ${NOPE:-default} to give a default)"
    ]


def test_bad_references() -> None:
    assert substitute("${1X}", ENV).errors == [
        "invalid reference '${1X}': use ${NAME} or ${NAME:-default} (write $$ for a literal $)"
    ]
    assert substitute("a${A", ENV).errors == [
        "unclosed '${' in 'a${A': write ${NAME}, or $$ for a literal $"
    ]


def test_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRQ_TEST_VAR", "here")
    assert substitute("${RRQ_TEST_VAR}").value == "here"


PIPELINE = """\
version: 1
pipeline: envp
redis:
  url: ${RRQ_TEST_URL:-}
workers:
  processes: ${RRQ_TEST_PROCS:-2}
defaults:
  timeout: ${RRQ_TEST_TIMEOUT:-90s}
  result_ttl: "${RRQ_TEST_TTL:-60}"
queues:
  a:
    handler: "${RRQ_TEST_MODULE:-mod}:run"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(dedent(text))
    return path


def test_defaults_apply_and_plain_values_are_retyped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("URL", "PROCS", "TIMEOUT", "TTL", "MODULE"):
        monkeypatch.delenv(f"RRQ_TEST_{name}", raising=False)
    config = load(_write(tmp_path, PIPELINE))
    assert config.redis.url is None  # empty means embedded
    assert config.workers.processes == 2  # an int: unquoted values read as if written there
    assert config.queues["a"].timeout == 90.0
    assert config.queues["a"].result_ttl == 60.0  # a quoted numeric string is still a duration
    assert config.queues["a"].handler == "mod:run"


def test_values_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRQ_TEST_URL", "redis://cache:6379/2")
    monkeypatch.setenv("RRQ_TEST_PROCS", "4")
    monkeypatch.setenv("RRQ_TEST_TIMEOUT", "1h30m")
    monkeypatch.setenv("RRQ_TEST_MODULE", "app.jobs")
    config = load(_write(tmp_path, PIPELINE))
    assert config.redis.url == "redis://cache:6379/2"
    assert config.workers.processes == 4
    assert config.queues["a"].timeout == 5400.0
    assert config.queues["a"].handler == "app.jobs:run"


def test_quoted_empty_url_is_embedded_too(tmp_path: Path) -> None:
    text = 'version: 1\npipeline: p\nredis: {url: ""}\nqueues: {a: {handler: "m:f"}}\n'
    assert load(_write(tmp_path, text)).redis.url is None


def test_unset_variable_is_one_problem_at_its_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RRQ_TEST_UNSET", raising=False)
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        queues:
          a:
            handler: m:f
            timeout: ${RRQ_TEST_UNSET}
        """,
    )
    # Only the unset variable: the raw "${...}" is not also reported as a bad duration.
    assert [str(p) for p in validate_file(path, check_imports=False)] == [
        f"{path}:6:14: queues.a.timeout: environment variable 'RRQ_TEST_UNSET' is not set "
        "(write ${RRQ_TEST_UNSET:-default} to give a default)"
    ]


def test_keys_are_not_substituted(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version: 1\npipeline: p\nqueues:\n  "${X}": {handler: "m:f"}\n')
    assert [str(p) for p in validate_file(path, check_imports=False)] == [
        f"{path}:4:3: queues.${{X}}: name must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, got '${{X}}'"
    ]


def test_from_dict_does_not_substitute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRQ_TEST_MODULE", "app")
    data = {"version": 1, "pipeline": "p", "queues": {"a": {"handler": "${RRQ_TEST_MODULE}:f"}}}
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert [str(p) for p in info.value.problems] == [
        "<dict>:0:0: queues.a.handler: must be a handler reference 'package.module:function', "
        "got '${RRQ_TEST_MODULE}:f'"
    ]

"""Checks beyond the schema, defaults merging, and the public API (load, from_dict, ...)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from rrq_flow.config import (
    PipelineConfig,
    QueueConfig,
    RetryPolicy,
    from_dict,
    load,
    validate_file,
)
from rrq_flow.errors import ConfigError, ConfigUsageError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "config"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def _write(directory: Path, text: str) -> Path:
    path = directory / "pipeline.yaml"
    path.write_text(dedent(text))
    return path


def _lines(path: Path, *, check_imports: bool = False) -> list[str]:
    return [
        str(p).removeprefix(f"{path}:") for p in validate_file(path, check_imports=check_imports)
    ]


def _pipeline(**queues: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "pipeline": "p", "queues": queues}


# --- the examples ---------------------------------------------------------------------------


def test_example_validates_with_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert validate_file("pipeline.yaml.example") == []
    config = load("pipeline.yaml.example", check_imports=True)
    assert config.source == ROOT / "pipeline.yaml.example"
    assert config.pipeline == "thumbnails"
    assert config.redis.url is None
    assert list(config.queues) == ["fetch", "resize"]
    assert config.queues["fetch"].next == ("resize",)
    assert config.queues["resize"].executor == "process"
    assert config.queues["resize"].retry.max_attempts == 5


def test_example_sets_every_setting() -> None:
    text = (ROOT / "pipeline.yaml.example").read_text()
    assert text.startswith("# yaml-language-server: $schema=./schemas/pipeline.schema.json\n")
    names = {f.name for cls in (QueueConfig, RetryPolicy) for f in dataclasses.fields(cls)}
    names |= {"url", "connect_timeout", "command_timeout", "processes", "shutdown_grace_period"}
    names |= {"heartbeat_interval", "metrics_port", "version", "pipeline"}
    for name in names - {"name"}:
        assert f"{name}:" in text, name


def test_good_fixture_builds_the_full_model() -> None:
    config = load(FIXTURES / "good.yaml", check_imports=True)
    assert config.redis.url == "redis://localhost:6379/3"
    assert config.redis.connect_timeout == 2.0
    assert config.redis.command_timeout == 1.5
    assert config.workers.processes == 3
    assert config.workers.shutdown_grace_period == 0.0
    assert config.workers.heartbeat_interval == 2.5
    assert config.workers.metrics_port == 9108
    fetch, resize, archive = (config.queues[n] for n in ("fetch", "resize", "archive"))
    assert fetch.next == ("resize", "archive")
    assert fetch.fan_out is True
    assert fetch.concurrency == 20
    assert fetch.timeout == 30.0
    assert fetch.lock_extension == 20.0  # from defaults
    assert fetch.lock_refresh is False
    assert fetch.initial_lease == 50.0
    assert fetch.dead_letter is False
    assert fetch.result_ttl == 3600.0
    assert fetch.max_stalls == 5
    assert fetch.retry == RetryPolicy(
        max_attempts=4,
        backoff="fixed",
        delay=2.0,
        fatal_errors=("builtins.ValueError", "cfgfix_handlers:BadInput"),
    )
    assert resize.executor == "process"
    assert resize.max_payload_bytes == 2048
    assert resize.retry.max_attempts == 5  # queue retry merges key by key over defaults.retry
    assert resize.retry.jitter is False
    assert resize.retry.delay == 2.0
    assert resize.retry.backoff == "fixed"
    assert resize.retry.max_delay == 600.0  # built-in default
    assert resize.timeout == 120.0
    assert archive.lock_refresh is True
    assert archive.initial_lease == 20.0
    assert archive.retry.fatal_errors == ()  # a queue can clear a default list


def test_built_in_defaults() -> None:
    config = from_dict(_pipeline(a={"handler": "m:f"}))
    assert config.queues["a"] == QueueConfig(name="a", handler="m:f")
    assert config.redis.url is None
    assert config.workers.processes == 1
    assert config.version == 1
    assert config.source is None


def test_model_is_frozen() -> None:
    config = from_dict(_pipeline(a={"handler": "m:f"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pipeline = "q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.queues["b"] = config.queues["a"]  # type: ignore[index]


# --- from_dict -------------------------------------------------------------------------------


def test_from_dict_accepts_code_values() -> None:
    config = from_dict(
        {
            "version": 1,
            "pipeline": "p",
            "defaults": {"timeout": 1.5, "retry": {"delay": "250ms"}},
            "queues": {"a": {"handler": "m:f", "next": ("b",)}, "b": {"handler": "m:g"}},
        },
        source=Path("/srv/app/pipeline.yaml"),
    )
    assert config.queues["a"].timeout == 1.5
    assert config.queues["a"].retry.delay == 0.25
    assert config.queues["a"].next == ("b",)
    assert config.source == Path("/srv/app/pipeline.yaml")
    assert config.state_dir == Path("/srv/app/.rrq-flow")


def test_from_dict_problems_are_located_in_dict() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(_pipeline(a={"handler": "m:f", "concurency": 2, "next": "b"}))
    assert [str(p) for p in info.value.problems] == [
        "<dict>:0:0: queues.a.concurency: unknown key; did you mean 'concurrency'?",
        "<dict>:0:0: queues.a.next: unknown queue 'b'; the pipeline has: a",
    ]
    assert str(info.value).splitlines()[0] == info.value.problems[0].__str__()


def test_from_dict_checks_imports_when_asked() -> None:
    data = _pipeline(a={"handler": "cfgfix_missing_mod:f"})
    from_dict(data)  # not checked by default
    with pytest.raises(ConfigError) as info:
        from_dict(data, check_imports=True)
    assert info.value.problems[0].message == "no module named 'cfgfix_missing_mod'"


def test_from_dict_searches_beside_source() -> None:
    data = _pipeline(a={"handler": "cfgfix_handlers:fetch"})
    config = from_dict(data, source=FIXTURES / "x.yaml", check_imports=True)
    assert config.queues["a"].handler == "cfgfix_handlers:fetch"


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(
        ConfigUsageError, match="a pipeline must be a mapping of settings, got a list"
    ):
        from_dict([])  # type: ignore[arg-type]


# --- the next graph --------------------------------------------------------------------------


def test_unknown_next_queue(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        queues:
          fetch: {handler: "m:f", next: [resize, store]}
          resize: {handler: "m:f", next: uplod}
          upload: {handler: "m:f"}
        """,
    )
    assert _lines(path) == [
        "4:42: queues.fetch.next[1]: unknown queue 'store'; "
        "the pipeline has: fetch, resize, upload",
        "5:34: queues.resize.next: unknown queue 'uplod'; did you mean 'upload'?",
    ]


def test_cycles_are_reported_with_their_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        queues:
          a: {handler: "m:f", next: b}
          b: {handler: "m:f", next: [c, d]}
          c: {handler: "m:f", next: a}
          d: {handler: "m:f"}
          e: {handler: "m:f", next: e}
        """,
    )
    assert _lines(path) == [
        "6:29: queues.c.next: 'next' makes a cycle: a -> b -> c -> a",
        "8:29: queues.e.next: 'next' makes a cycle: e -> e",
    ]


def test_a_dag_is_fine() -> None:
    config = from_dict(
        _pipeline(
            a={"handler": "m:f", "next": ["b", "c"]},
            b={"handler": "m:f", "next": "d"},
            c={"handler": "m:f", "next": "d"},
            d={"handler": "m:f"},
        )
    )
    assert config.queues["a"].next == ("b", "c")


# --- durations beyond the schema ----------------------------------------------------------------


def test_durations_that_must_be_positive(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        redis: {connect_timeout: 0}
        workers: {heartbeat_interval: 0s, shutdown_grace_period: 0}
        defaults: {lock_extension: 0ms, retry: {delay: 0}}
        queues:
          a: {handler: "m:f", timeout: 0, result_ttl: .inf}
        """,
    )
    assert _lines(path) == [
        "3:26: redis.connect_timeout: must be greater than 0, got 0",
        "4:31: workers.heartbeat_interval: must be greater than 0, got '0s'",
        "5:28: defaults.lock_extension: must be greater than 0, got '0ms'",
        "7:32: queues.a.timeout: must be greater than 0, got 0",
        "7:47: queues.a.result_ttl: invalid duration inf: expected a number of seconds, or "
        "<number><unit> parts with units ms, s, m, h, d (e.g. 250ms, 30s, 1h30m, 1.5s)",
    ]


# --- imports ---------------------------------------------------------------------------------

IMPORTS = """\
version: 1
pipeline: p
defaults:
  retry:
    fatal_errors: [builtins.ValueError, "cfgfix_handlers:NotAnError", builtins.Nonexistent]
queues:
  ok: {handler: "cfgfix_handlers:fetch"}
  missing_mod: {handler: "cfgfix_nothing:run"}
  missing_attr: {handler: "cfgfix_handlers:resise"}
  broken: {handler: "cfgfix_broken:run"}
  dep: {handler: "cfgfix_needs_dep:run"}
  not_callable: {handler: "cfgfix_handlers:NOT_CALLABLE"}
  want_async: {handler: "cfgfix_handlers:resize", executor: async}
  want_thread: {handler: "cfgfix_handlers:fetch", executor: thread}
  async_obj: {handler: "cfgfix_handlers:async_instance", executor: async}
  proc: {handler: "cfgfix_handlers:resize", executor: process}
  fatal:
    handler: cfgfix_handlers:resize
    retry: {fatal_errors: ["cfgfix_handlers:BadInput", builtins.len]}
"""


def test_import_problems(tmp_path: Path) -> None:
    # The pipeline lives next to its handlers: the file's directory is searched.
    path = tmp_path / "pipeline.yaml"
    for module in FIXTURES.glob("cfgfix_*.py"):
        (tmp_path / module.name).write_text(module.read_text())
    path.write_text(IMPORTS)
    assert _lines(path, check_imports=True) == [
        "5:41: defaults.retry.fatal_errors[1]: "
        "'cfgfix_handlers:NotAnError' is not an exception class (it is a class)",
        "5:71: defaults.retry.fatal_errors[2]: module 'builtins' has no attribute 'Nonexistent'",
        "8:26: queues.missing_mod.handler: no module named 'cfgfix_nothing'",
        "9:27: queues.missing_attr.handler: "
        "module 'cfgfix_handlers' has no attribute 'resise'; did you mean 'resize'?",
        "10:21: queues.broken.handler: "
        "importing 'cfgfix_broken' failed: RuntimeError: database not configured",
        "11:18: queues.dep.handler: importing 'cfgfix_needs_dep' failed: "
        "ModuleNotFoundError: No module named 'cfgfix_not_installed_anywhere'",
        "12:27: queues.not_callable.handler: "
        "'cfgfix_handlers:NOT_CALLABLE' is not callable (it is an int)",
        "13:61: queues.want_async.executor: executor 'async' needs an 'async def' handler, "
        "but 'cfgfix_handlers:resize' is a plain function",
        "14:61: queues.want_thread.executor: executor 'thread' cannot run "
        "'cfgfix_handlers:fetch', an 'async def' function; use executor 'async' or leave "
        "executor out",
        "19:56: queues.fatal.retry.fatal_errors[1]: "
        "'builtins.len' is not an exception class (it is a builtin_function_or_method)",
    ]
    # Without imports, the same file is valid.
    assert _lines(path) == []


def test_executor_from_defaults_is_checked_per_queue(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        defaults: {executor: thread}
        queues:
          a: {handler: "cfgfix_handlers:fetch"}
          b: {handler: "cfgfix_handlers:resize"}
        """,
    )
    sys.path.insert(0, str(FIXTURES))
    assert _lines(path, check_imports=True) == [
        "5:16: queues.a.handler: executor 'thread' (from defaults) cannot run "
        "'cfgfix_handlers:fetch', an 'async def' function; use executor 'async' or leave "
        "executor out"
    ]


def test_current_directory_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "configs"
    (project / "cfgfix_cwd_pkg").mkdir(parents=True)
    (project / "cfgfix_cwd_pkg" / "__init__.py").write_text("")
    (project / "cfgfix_cwd_pkg" / "jobs.py").write_text("def run(x):\n    return x\n")
    elsewhere.mkdir()
    path = _write(
        elsewhere,
        'version: 1\npipeline: p\nqueues: {a: {handler: "cfgfix_cwd_pkg.jobs:run"}}\n',
    )
    monkeypatch.chdir(project)
    assert validate_file(path) == []
    assert os.getcwd() == str(project)


# --- API behaviour ---------------------------------------------------------------------------


def test_load_raises_config_error_with_problems_in_file_order() -> None:
    with pytest.raises(ConfigError) as info:
        load(FIXTURES / "five_mistakes.yaml")
    assert [(p.line, p.col) for p in info.value.problems] == [
        (2, 11),
        (6, 5),
        (7, 18),
        (8, 11),
        (11, 14),
    ]
    assert all(p.file == str(FIXTURES / "five_mistakes.yaml") for p in info.value.problems)


def test_load_does_not_import_by_default(tmp_path: Path) -> None:
    path = _write(tmp_path, 'version: 1\npipeline: p\nqueues: {a: {handler: "cfgfix_zzz:f"}}\n')
    assert isinstance(load(path), PipelineConfig)
    with pytest.raises(ConfigError):
        load(path, check_imports=True)


def test_load_sets_resolved_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, 'version: 1\npipeline: p\nqueues: {a: {handler: "m:f"}}\n')
    monkeypatch.chdir(tmp_path)
    config = load("pipeline.yaml")
    assert config.source == (tmp_path / "pipeline.yaml").resolve()
    assert config.source.is_absolute()


def test_validate_file_raises_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigUsageError):
        validate_file(tmp_path / "nothing.yaml")


def test_unknown_queue_lookup() -> None:
    config = from_dict(_pipeline(a={"handler": "m:f"}))
    with pytest.raises(KeyError, match="unknown queue 'b'; the pipeline has: a"):
        config.queue("b")

"""The JSON Schema: valid, documented, in step with the model, and its errors made human."""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import json
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from rrq_flow.config import parse_duration, validate_file
from rrq_flow.config.model import (
    PipelineConfig,
    QueueConfig,
    RedisSettings,
    RetryPolicy,
    WorkersConfig,
)
from rrq_flow.config.schema import load_schema, schema_text

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
DEFS = SCHEMA["$defs"]
QUEUE_ONLY = {"handler", "next"}


def _fields(cls: type, *, skip: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    return {f.name for f in dataclasses.fields(cls)} - skip


def _props(schema: dict[str, Any]) -> set[str]:
    return set(schema["properties"])


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"]


def test_schema_resource_loads_through_importlib_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("rrq_flow.schemas") is None:
        # An editable install maps only `rrq_flow`; emulate what a wheel installs.
        spec = importlib.util.spec_from_file_location(
            "rrq_flow.schemas",
            ROOT / "schemas" / "__init__.py",
            submodule_search_locations=[str(ROOT / "schemas")],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setitem(sys.modules, "rrq_flow.schemas", module)
    resource = importlib.resources.files("rrq_flow.schemas") / "pipeline.schema.json"
    text = resource.read_text(encoding="utf-8")
    assert json.loads(text)["title"] == "rrq-flow pipeline"
    schema_text.cache_clear()
    try:
        assert schema_text() == text
    finally:
        schema_text.cache_clear()


def test_every_property_has_a_title_and_description() -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if not prop.get("title") or not prop.get("description"):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(SCHEMA, "$")
    assert missing == []


def test_model_and_schema_have_the_same_fields() -> None:
    top = SCHEMA["properties"]
    assert _props(SCHEMA) == _fields(PipelineConfig, skip={"source"}) | {"defaults"}
    assert _props(top["redis"]) == _fields(RedisSettings)
    assert _props(top["workers"]) == _fields(WorkersConfig)
    assert _props(DEFS["retry"]) == _fields(RetryPolicy)
    assert _props(DEFS["queue"]) == _fields(QueueConfig, skip={"name"})
    assert _props(top["defaults"]) == _fields(QueueConfig, skip={"name"} | QUEUE_ONLY)


def test_defaults_and_queues_describe_settings_identically() -> None:
    queue, defaults = DEFS["queue"]["properties"], SCHEMA["properties"]["defaults"]["properties"]
    for name, schema in defaults.items():
        assert queue[name] == schema, name


def _schema_defaults() -> list[tuple[type, str, Any]]:
    top = SCHEMA["properties"]
    sections = [
        (RedisSettings, top["redis"]),
        (WorkersConfig, top["workers"]),
        (RetryPolicy, DEFS["retry"]),
        (QueueConfig, DEFS["queue"]),
    ]
    return [
        (cls, name, prop["default"])
        for cls, section in sections
        for name, prop in section["properties"].items()
        if "default" in prop
    ]


@pytest.mark.parametrize(("cls", "name", "default"), _schema_defaults())
def test_schema_defaults_match_the_model(cls: type, name: str, default: Any) -> None:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    expected = field.default_factory() if callable(field.default_factory) else field.default
    if isinstance(default, str) and isinstance(expected, float):
        default = parse_duration(default)
    if isinstance(default, list):
        default = tuple(default)
    assert default == expected


def test_every_model_default_is_documented_in_the_schema() -> None:
    documented = {(cls, name) for cls, name, _ in _schema_defaults()}
    for cls in (RedisSettings, WorkersConfig, RetryPolicy, QueueConfig):
        for f in dataclasses.fields(cls):
            has_default = f.default not in (dataclasses.MISSING, None, ())
            if has_default:
                assert (cls, f.name) in documented, f"{cls.__name__}.{f.name}"


def test_duration_fields_use_the_duration_definition() -> None:
    sections = [
        (RedisSettings, SCHEMA["properties"]["redis"]),
        (WorkersConfig, SCHEMA["properties"]["workers"]),
        (RetryPolicy, DEFS["retry"]),
        (QueueConfig, DEFS["queue"]),
    ]
    hints_float = 0
    for cls, section in sections:
        for f in dataclasses.fields(cls):
            if f.type == "float":
                hints_float += 1
                assert section["properties"][f.name]["$ref"] == "#/$defs/duration", f.name
    assert hints_float == 9


# --- messages ------------------------------------------------------------------------------


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(dedent(text))
    return [str(p).removeprefix(f"{path}:") for p in validate_file(path, check_imports=False)]


HEAD = "version: 1\npipeline: p\n"
DURATION = (
    "must be a duration such as 30s, 1h30m or 250ms (units ms, s, m, h, d; a number is seconds)"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 2\npipeline: p\nqueues: {a: {handler: 'm:f'}}\n",
            ["1:10: version: must be 1, got 2"],
        ),
        (
            "version: 1\npipeline: My Pipe\nqueues: {a: {handler: 'm:f'}}\n",
            ["2:11: pipeline: must match ^[a-z0-9][a-z0-9_-]{0,63}$, got 'My Pipe'"],
        ),
        (
            "version: 1\npipeline: 7\nqueues: {a: {handler: 'm:f'}}\n",
            ["2:11: pipeline: must be a string matching ^[a-z0-9][a-z0-9_-]{0,63}$, got 7"],
        ),
        (
            "version: 1\nqueues: {a: {handler: 'm:f'}}\n",
            ["1:1: (root): missing required key 'pipeline'"],
        ),
        (HEAD, ["1:1: (root): missing required key 'queues'"]),
        (HEAD + "queues: {}\n", ["3:9: queues: must not be empty"]),
        (HEAD + "queues:\n", ["3:8: queues: must be a mapping, got null"]),
        (HEAD + "queues:\n  a:\n", ["4:5: queues.a: must be a mapping, got null"]),
        (
            HEAD + "queues:\n  a: {concurrency: 2}\n",
            ["4:6: queues.a: missing required key 'handler'"],
        ),
        (
            HEAD + "queues:\n  Fetch: {handler: 'm:f'}\n",
            ["4:3: queues.Fetch: name must match ^[a-z0-9][a-z0-9_-]{0,63}$, got 'Fetch'"],
        ),
        (
            HEAD + "queues:\n  a:\n    handler: m:f\n    timout: 30s\n",
            ["6:5: queues.a.timout: unknown key; did you mean 'timeout'?"],
        ),
        (
            HEAD + "queues:\n  a:\n    handler: m:f\n    Timeout: 30s\n",
            ["6:5: queues.a.Timeout: unknown key; did you mean 'timeout'?"],
        ),
        (
            HEAD + "queues:\n  a:\n    handler: m:f\n    colour: red\n",
            [
                "6:5: queues.a.colour: unknown key; expected one of: handler, next, concurrency, "
                "prefetch, "
                "timeout, lock_extension, lock_refresh, retry, dead_letter, result_ttl, keep_args, "
                "executor, "
                "fan_out, join, join_on_failure, max_stalls, max_payload_bytes, max_result_bytes, "
                "max_error_bytes, rate_limit, rate_burst, max_running, priority"
            ],
        ),
        (
            HEAD + "queues:\n  a:\n    handler: m:f\n    max_attempts: 2\n",
            ["6:5: queues.a.max_attempts: unknown key; 'max_attempts' belongs under 'retry'"],
        ),
        (
            HEAD + "timeout: 5s\nqueues: {a: {handler: 'm:f'}}\n",
            ["3:1: timeout: unknown key; 'timeout' belongs under 'defaults' or a queue"],
        ),
        (
            HEAD + "defaults: {handler: 'm:f'}\nqueues: {a: {handler: 'm:f'}}\n",
            ["3:12: defaults.handler: unknown key; 'handler' is set per queue, not in defaults"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', processes: 2}\n",
            ["4:23: queues.a.processes: unknown key; 'processes' belongs under 'workers'"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', concurrency: ten}\n",
            ["4:36: queues.a.concurrency: must be an integer >= 1, got 'ten'"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', concurrency: 0}\n",
            ["4:36: queues.a.concurrency: must be an integer >= 1, got 0"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', concurrency: 1.5}\n",
            ["4:36: queues.a.concurrency: must be an integer >= 1, got 1.5"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', concurrency: true}\n",
            ["4:36: queues.a.concurrency: must be an integer >= 1, got true"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', timeout: 5 minutes}\n",
            [f"4:32: queues.a.timeout: {DURATION}, got '5 minutes'"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', timeout: -1}\n",
            [f"4:32: queues.a.timeout: {DURATION}, got -1"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', timeout: [1]}\n",
            [f"4:32: queues.a.timeout: {DURATION}, got a list"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', lock_refresh: 'true'}\n",
            ["4:37: queues.a.lock_refresh: must be true or false, got 'true'"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', executor: proces}\n",
            [
                "4:33: queues.a.executor: must be one of 'async', 'thread', 'process', "
                "got 'proces'; did you mean 'process'?"
            ],
        ),
        (
            HEAD + "queues:\n  a: {handler: fetch}\n",
            [
                "4:16: queues.a.handler: must be a handler reference "
                "'package.module:function', got 'fetch'"
            ],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', next: 5}\n",
            ["4:29: queues.a.next: must be a queue name or a list of queue names, got 5"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', next: [b, B]}\n  b: {handler: 'm:f'}\n",
            ["4:33: queues.a.next[1]: must match ^[a-z0-9][a-z0-9_-]{0,63}$, got 'B'"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', next: [b, b]}\n  b: {handler: 'm:f'}\n",
            ["4:29: queues.a.next: must not list 'b' twice"],
        ),
        (
            HEAD + "queues:\n  a: {handler: 'm:f', retry: {max_attempts: 0, backoff: linear}}\n",
            [
                "4:45: queues.a.retry.max_attempts: must be an integer >= 1, got 0",
                "4:57: queues.a.retry.backoff: must be one of 'exponential', 'fixed', got 'linear'",
            ],
        ),
        (
            HEAD
            + "defaults:\n  retry:\n    fatal_errors: [ValueError, 5]\n"
            + "queues: {a: {handler: 'm:f'}}\n",
            [
                "5:20: defaults.retry.fatal_errors[0]: must be an exception class "
                "'package.module:Name' (or 'builtins.Name'), got 'ValueError'",
                "5:32: defaults.retry.fatal_errors[1]: must be an exception class "
                "'package.module:Name' (or 'builtins.Name'), got 5",
            ],
        ),
        (
            HEAD + "redis: {url: 'http://localhost'}\nqueues: {a: {handler: 'm:f'}}\n",
            [
                "3:14: redis.url: must be a redis://, rediss:// or unix:// URL "
                "(or empty for embedded Redis), got 'http://localhost'"
            ],
        ),
        (
            HEAD + "workers: {metrics_port: 70000, processes: 0}\nqueues: {a: {handler: 'm:f'}}\n",
            [
                "3:25: workers.metrics_port: must be an integer from 1 to 65535, got 70000",
                "3:43: workers.processes: must be an integer >= 1, got 0",
            ],
        ),
        (
            HEAD + "workers: {metrics_port: http}\nqueues: {a: {handler: 'm:f'}}\n",
            ["3:25: workers.metrics_port: must be an integer from 1 to 65535, got 'http'"],
        ),
        (
            HEAD + "workers: 3\nqueues: {a: {handler: 'm:f'}}\n",
            ["3:10: workers: must be a mapping, got 3"],
        ),
    ],
)
def test_schema_messages(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert _problems(tmp_path, text) == expected


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    text = HEAD + "redis:\ndefaults:\n  retry:\nworkers:\nqueues: {a: {handler: 'm:f'}}\n"
    assert _problems(tmp_path, text) == []


def test_extension_keys_are_ignored(tmp_path: Path) -> None:
    assert _problems(tmp_path, HEAD + "x-anything: [1, 2]\nqueues: {a: {handler: 'm:f'}}\n") == []

"""Checks beyond the schema, and the step from checked data to :class:`PipelineConfig`.

Order of work: problems found while reading (duplicate keys, unset variables), then the schema,
then the checks here (durations that must be positive, the ``next`` graph, and optionally that
handlers and ``fatal_errors`` import). Nodes that already have a problem are not re-reported.
Only a document without problems is built into a config, with ``defaults`` merged into every
queue (``retry`` key by key).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrq_flow.config.durations import parse_duration
from rrq_flow.config.imports import (
    ImportProblem,
    import_exception_class,
    import_handler,
    is_async_callable,
)
from rrq_flow.config.loader import Document, PathKey, read_document
from rrq_flow.config.model import (
    DurabilitySettings,
    PipelineConfig,
    QueueConfig,
    RedisSettings,
    RetryPolicy,
    ScheduleConfig,
    SentinelSettings,
    TLSSettings,
    WorkersConfig,
)
from rrq_flow.config.redis_url import url_problem
from rrq_flow.config.schema import schema_problems
from rrq_flow.errors import Problem

# Duration settings, and whether 0 is allowed for them.
_DURATIONS: dict[str, bool] = {
    "connect_timeout": False,
    "command_timeout": False,
    "heartbeat_interval": False,
    "shutdown_grace_period": True,
    "timeout": False,
    "lock_extension": False,
    "result_ttl": False,
    "delay": True,
    "max_delay": True,
}
_EXECUTORS = ("async", "thread", "process")


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of checking a document: a config exactly when there are no problems."""

    config: PipelineConfig | None
    problems: list[Problem]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _queues(data: Any) -> dict[str, dict[str, Any]]:
    queues = _mapping(_mapping(data).get("queues"))
    return {name: _mapping(spec) for name, spec in queues.items() if isinstance(name, str)}


def _settings_sections(data: Any) -> Iterator[tuple[PathKey, dict[str, Any]]]:
    """Every mapping that holds queue settings: ``defaults`` and each queue."""
    yield ("defaults",), _mapping(_mapping(data).get("defaults"))
    for name, spec in _queues(data).items():
        yield ("queues", name), spec


# --- semantic checks ----------------------------------------------------------------------------


def _duration_problems(doc: Document) -> Iterator[Problem]:
    data = _mapping(doc.data)
    sections: list[tuple[PathKey, dict[str, Any]]] = [
        (("redis",), _mapping(data.get("redis"))),
        (("redis", "durability"), _mapping(_mapping(data.get("redis")).get("durability"))),
        (("workers",), _mapping(data.get("workers"))),
    ]
    for path, section in _settings_sections(data):
        sections += [(path, section), ((*path, "retry"), _mapping(section.get("retry")))]
    for base, section in sections:
        for key, value in section.items():
            path = (*base, key)
            if key not in _DURATIONS or doc.is_blocked(path):
                continue
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                yield doc.problem(path, str(exc))
                continue
            if seconds == 0 and not _DURATIONS[key]:
                yield doc.problem(path, f"must be greater than 0, got {value!r}")


def _redis_url_problems(doc: Document) -> Iterator[Problem]:
    """``redis.url`` can be used to connect (the schema checks only its scheme)."""
    path: PathKey = ("redis", "url")
    url = _mapping(_mapping(doc.data).get("redis")).get("url")
    if isinstance(url, str) and url and not doc.is_blocked(path):
        problem = url_problem(url)
        if problem is not None:
            yield doc.problem(path, problem)


def _topology_problems(doc: Document) -> Iterator[Problem]:
    """Sentinel and Cluster exclude each other (a Cluster does its own failover)."""
    redis = _mapping(_mapping(doc.data).get("redis"))
    if redis.get("sentinel") and redis.get("cluster") is True:
        yield doc.problem(
            ("redis", "sentinel"),
            "give either sentinel or cluster: a Redis Cluster fails over by itself",
        )
    if redis.get("durability") and redis.get("cluster") is True:
        yield doc.problem(
            ("redis", "durability"),
            "durability (WAIT) is not supported on a Redis Cluster yet: leave it out, or use "
            "a master with replicas under Sentinel",
        )
    if redis.get("nodes") and redis.get("cluster") is not True:
        yield doc.problem(
            ("redis", "nodes"),
            "nodes lists a Redis Cluster's seed nodes: set cluster: true (Sentinel's nodes go "
            "under sentinel)",
        )


def _partition_problems(doc: Document) -> Iterator[Problem]:
    """Flow limits are counted per hash tag, so with ``partitions`` > 1 they would apply per
    partition (N times the limit): refused rather than silently multiplied."""
    parts = _mapping(doc.data).get("partitions")
    if not isinstance(parts, int) or isinstance(parts, bool) or parts <= 1:
        return
    for path, spec in _settings_sections(doc.data):
        for key in ("rate_limit", "max_running"):
            if spec.get(key) is not None:
                yield doc.problem(
                    (*path, key),
                    f"{key} is counted per partition and cannot be used with partitions: "
                    f"{parts} (it would allow {parts} times the limit); leave partitions at 1 "
                    "for this pipeline, or put the limited stage in a pipeline of its own",
                )


def _next_problems(doc: Document) -> Iterator[Problem]:
    """Every ``next`` names a queue, and following ``next`` never comes back (no cycles)."""
    queues = _queues(doc.data)
    edges: dict[str, list[tuple[str, PathKey]]] = {name: [] for name in queues}
    for name, spec in queues.items():
        base: PathKey = ("queues", name, "next")
        target = spec.get("next")
        if doc.is_blocked(base):
            continue
        if isinstance(target, str):
            items: list[tuple[Any, PathKey]] = [(target, base)]
        elif isinstance(target, list):
            items = [(t, (*base, i)) for i, t in enumerate(target)]
        else:
            items = []
        for target_name, path in items:
            if not isinstance(target_name, str) or doc.is_blocked(path):
                continue
            if target_name in queues:
                edges[name].append((target_name, path))
                continue
            close = difflib.get_close_matches(target_name, list(queues), n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"the pipeline has: {', '.join(queues)}"
            )
            yield doc.problem(path, f"unknown queue {target_name!r}; {hint}")

    state: dict[str, bool] = {}  # False: on the current path, True: finished
    stack: list[str] = []

    def visit(queue: str) -> Iterator[Problem]:
        state[queue] = False
        stack.append(queue)
        for target_name, path in edges[queue]:
            if state.get(target_name) is False:
                cycle = [*stack[stack.index(target_name) :], target_name]
                yield doc.problem(path, f"'next' makes a cycle: {' -> '.join(cycle)}")
            elif target_name not in state:
                yield from visit(target_name)
        stack.pop()
        state[queue] = True

    for name in queues:
        if name not in state:
            yield from visit(name)


_TLS_FILES = ("ca_file", "cert_file", "key_file")


def _tls_problems(doc: Document, base: Path | None) -> Iterator[Problem]:
    """TLS files exist and are readable, come in pairs, and only with a ``rediss://`` URL."""
    redis = _mapping(_mapping(doc.data).get("redis"))
    tls = _mapping(redis.get("tls"))
    if not tls or doc.is_blocked(("redis", "tls")):
        return
    url = redis.get("url")
    if (
        isinstance(url, str)
        and not url.startswith("rediss://")
        and not doc.is_blocked(("redis", "url"))
    ):
        shown = "embedded Redis (no url)" if not url else f"a {url.partition(':')[0]}:// url"
        yield doc.problem(
            ("redis", "tls"), f"TLS settings need a rediss:// url, but this is {shown}"
        )
    for key in _TLS_FILES:
        value = tls.get(key)
        if not isinstance(value, str) or not value or doc.is_blocked(("redis", "tls", key)):
            continue
        path = tls_path(value, base)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            yield doc.problem(("redis", "tls", key), f"cannot read {str(path)!r}: {exc.strerror}")
    if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
        given, missing = ("cert_file", "key_file")
        if not tls.get("cert_file"):
            given, missing = missing, given
        yield doc.problem(("redis", "tls", given), f"{given} needs {missing} as well")


def tls_path(value: str, base: Path | None) -> Path:
    """A TLS file setting as a path: relative ones are taken from the pipeline's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _join_problems(doc: Document) -> Iterator[Problem]:
    """A ``join: true`` queue is reached through ``next`` from some ``fan_out: true`` queue;
    otherwise every value reaching it would be a group of one (almost surely a mistake)."""
    queues = _queues(doc.data)
    defaults = _mapping(_mapping(doc.data).get("defaults"))

    def flag(name: str, key: str) -> bool:
        return queues[name].get(key, defaults.get(key)) is True

    def targets(name: str) -> list[str]:
        nxt = queues[name].get("next")
        items = [nxt] if isinstance(nxt, str) else nxt if isinstance(nxt, list) else []
        return [t for t in items if isinstance(t, str) and t in queues]

    reached: set[str] = set()
    pending = [t for name in queues if flag(name, "fan_out") for t in targets(name)]
    while pending:
        name = pending.pop()
        if name not in reached:
            reached.add(name)
            pending += targets(name)
    for name in queues:
        path: PathKey = ("queues", name, "join")
        if "join" not in queues[name]:
            path = ("queues", name)
        if flag(name, "join") and name not in reached and not doc.is_blocked(path):
            yield doc.problem(
                path,
                f"join queue {name!r} cannot be reached from a fan_out queue: no queue with "
                "fan_out: true leads to it through next, so it would only ever see groups of one",
            )


def _import_problems(doc: Document, search_paths: Sequence[Path]) -> Iterator[Problem]:
    """Handlers import and suit their executor; ``fatal_errors`` are exception classes."""
    data = _mapping(doc.data)
    defaults = _mapping(data.get("defaults"))
    path: PathKey
    for name, spec in _queues(data).items():
        path = ("queues", name, "handler")
        reference = spec.get("handler")
        if not isinstance(reference, str) or doc.is_blocked(path):
            continue
        try:
            handler = import_handler(reference, search_paths=search_paths)
        except ImportProblem as exc:
            yield doc.problem(path, str(exc))
            continue
        if "executor" in spec:
            executor, where, origin = spec["executor"], ("queues", name, "executor"), ""
        else:
            executor, where, origin = defaults.get("executor"), path, " (from defaults)"
        if executor not in _EXECUTORS:
            continue  # unset (chosen from the handler) or already reported by the schema
        is_async = is_async_callable(handler)
        if executor == "async" and not is_async:
            yield doc.problem(
                where,
                f"executor 'async'{origin} needs an 'async def' handler, "
                f"but {reference!r} is a plain function",
            )
        elif executor != "async" and is_async:
            yield doc.problem(
                where,
                f"executor {executor!r}{origin} cannot run {reference!r}, an 'async def' "
                "function; use executor 'async' or leave executor out",
            )

    for base, section in _settings_sections(data):
        errors = _mapping(section.get("retry")).get("fatal_errors")
        if not isinstance(errors, list):
            continue
        for i, reference in enumerate(errors):
            path = (*base, "retry", "fatal_errors", i)
            if not isinstance(reference, str) or doc.is_blocked(path):
                continue
            try:
                import_exception_class(reference, search_paths=search_paths)
            except ImportProblem as exc:
                yield doc.problem(path, str(exc))


def _schedule_problems(doc: Document) -> Iterator[Problem]:
    """Each schedule names a queue, has a valid cron expression and time zone, and JSON args."""
    from rrq_flow.protocol.ops import encode_json
    from rrq_flow.schedules import cron_problem, timezone_problem

    queues = _queues(doc.data)
    for name, spec in _mapping(_mapping(doc.data).get("schedules")).items():
        if not isinstance(spec, dict):
            continue
        base: PathKey = ("schedules", name)
        checks: list[tuple[str, Any]] = [
            ("cron", lambda v: cron_problem(v)),
            ("timezone", lambda v: timezone_problem(v)),
        ]
        for key, problem_of in checks:
            value = spec.get(key)
            if isinstance(value, str) and not doc.is_blocked((*base, key)):
                message = problem_of(value)
                if message:
                    yield doc.problem((*base, key), message)
        queue = spec.get("queue")
        if isinstance(queue, str) and queue not in queues and not doc.is_blocked((*base, "queue")):
            yield doc.problem(
                (*base, "queue"), f"unknown queue {queue!r}; the pipeline has: {', '.join(queues)}"
            )
        for key in ("args", "kwargs"):
            if key in spec and not doc.is_blocked((*base, key)):
                try:
                    encode_json(spec[key])
                except (TypeError, ValueError) as exc:
                    yield doc.problem((*base, key), f"must be plain JSON data: {exc}")


# --- building the model ---------------------------------------------------------------------


def _convert(key: str, value: Any) -> Any:
    if key in _DURATIONS:
        return parse_duration(value)
    if key in ("next", "fatal_errors"):
        return (value,) if isinstance(value, str) else tuple(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON Schema counts 3.0 as an integer
    return value


def _settings(section: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _convert(key, value) for key, value in section.items()}


def build_config(data: Mapping[str, Any], *, source: Path | None = None) -> PipelineConfig:
    """The model for data that passed every check; ``defaults`` merged into each queue."""
    redis = _settings(_mapping(data.get("redis")))
    redis["url"] = redis.get("url") or None  # empty means embedded, like leaving it out
    base = source.parent if source is not None else None
    tls = _mapping(redis.get("tls"))
    tls_settings: dict[str, Any] = {
        key: str(tls_path(value, base)) if key in _TLS_FILES else value
        for key, value in tls.items()
        if value is not None
    }
    redis["tls"] = TLSSettings(**tls_settings)
    if isinstance(redis.get("sentinel"), Mapping):
        sentinel = _settings(redis["sentinel"])
        redis["sentinel"] = SentinelSettings(**{**sentinel, "nodes": tuple(sentinel["nodes"])})
    if "nodes" in redis:
        redis["nodes"] = tuple(redis["nodes"])
    if isinstance(redis.get("durability"), Mapping):
        redis["durability"] = DurabilitySettings(**_settings(redis["durability"]))
    defaults = _mapping(data.get("defaults"))
    queues: dict[str, QueueConfig] = {}
    for name, spec in _queues(data).items():
        merged = {k: v for k, v in {**defaults, **spec}.items() if k != "retry"}
        retry = {**_mapping(defaults.get("retry")), **_mapping(spec.get("retry"))}
        queues[name] = QueueConfig(
            name=name, retry=RetryPolicy(**_settings(retry)), **_settings(merged)
        )
    return PipelineConfig(
        pipeline=data["pipeline"],
        queues=queues,
        redis=RedisSettings(**redis),
        workers=WorkersConfig(**_settings(_mapping(data.get("workers")))),
        version=data["version"],
        partitions=data.get("partitions") or 1,
        schedules={
            name: ScheduleConfig(
                name=name,
                queue=spec["queue"],
                cron=spec["cron"],
                timezone=spec.get("timezone", "UTC"),
                args=tuple(spec.get("args") or ()),
                kwargs=dict(spec.get("kwargs") or {}),
                catch_up=spec.get("catch_up", "latest"),
            )
            for name, spec in _mapping(data.get("schedules")).items()
        },
        source=source,
    )


# --- putting it together --------------------------------------------------------------------


def check(
    doc: Document,
    *,
    check_imports: bool = False,
    source: Path | None = None,
    search_paths: Sequence[Path] = (),
) -> Checked:
    """Run every check on ``doc``; build the config when nothing is wrong."""
    problems = [*doc.problems, *schema_problems(doc)]
    problems += _duration_problems(doc)
    problems += _redis_url_problems(doc)
    problems += _next_problems(doc)
    problems += _schedule_problems(doc)
    problems += _tls_problems(doc, source.parent if source is not None else None)
    problems += _join_problems(doc)
    problems += _topology_problems(doc)
    problems += _partition_problems(doc)
    if check_imports:
        problems += _import_problems(doc, search_paths)
    problems.sort(key=lambda p: (p.line, p.col))
    if problems:
        return Checked(None, problems)
    return Checked(build_config(doc.data, source=source), [])


def check_file(path: str | os.PathLike[str], *, check_imports: bool = False) -> Checked:
    """Read and check a pipeline file (ConfigUsageError if it cannot be read or parsed).

    Handlers are imported with the file's directory and the current directory on ``sys.path``.
    """
    doc = read_document(path)
    source = Path(path).resolve()
    return check(
        doc,
        check_imports=check_imports,
        source=source,
        search_paths=(source.parent, Path.cwd()),
    )

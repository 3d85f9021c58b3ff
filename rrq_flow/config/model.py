"""The typed, immutable configuration model of a pipeline.

Everything after loading works with these frozen dataclasses, never with raw dicts. Durations are
stored in seconds (float). Defaults from ``defaults:`` in the file are already merged into every
:class:`QueueConfig`; the values below are what applies when the file says nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rrq_flow.client.async_client import Client
    from rrq_flow.client.sync_client import SyncClient

BackoffKind = Literal["exponential", "fixed"]
ExecutorKind = Literal["async", "thread", "process"]
PersistenceKind = Literal["aof", "none"]
JoinOnFailure = Literal["run", "dead_letter"]

DEFAULT_CONCURRENCY = 10
DEFAULT_TIMEOUT = 300.0
DEFAULT_LOCK_EXTENSION = 30.0
DEFAULT_RESULT_TTL = 86400.0
DEFAULT_MAX_STALLS = 3
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_MAX_ERROR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """How ``rediss://`` connections check the server and present a client certificate.

    ``ca_file`` None: the system's trusted CAs (and OpenSSL's ``SSL_CERT_FILE``). The server's
    certificate is verified and its host name checked unless the file says otherwise.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True
    verify: bool = True


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Find the master through Redis Sentinel (``redis.sentinel``)."""

    master: str
    nodes: tuple[str, ...]  # "host:port" of the sentinels
    password: str | None = None  # of the data nodes (the URL's password when unset)
    sentinel_password: str | None = None  # of the sentinels themselves


@dataclass(frozen=True, slots=True)
class DurabilitySettings:
    """Wait (``WAIT``) after enqueue and completion batches until ``replicas`` have them."""

    replicas: int = 1
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where Redis is. ``url`` None means: start (or reuse) the embedded redis-server, unless
    ``sentinel`` or ``cluster`` says where it is."""

    url: str | None = None
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    # "aof": `run` refuses a Redis that does not persist with AOF; "none": the risk is accepted.
    persistence: PersistenceKind = "aof"
    tls: TLSSettings = field(default_factory=TLSSettings)
    sentinel: SentinelSettings | None = None
    # A Redis Cluster: ``url`` and/or ``nodes`` ("host:port") are the seed nodes.
    cluster: bool = False
    nodes: tuple[str, ...] = ()
    durability: DurabilitySettings | None = None

    @property
    def external(self) -> bool:
        """True when the file says where Redis is (no embedded server is started)."""
        return bool(self.url) or self.sentinel is not None or self.cluster


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed attempt is retried. ``max_attempts`` counts every execution, the first too."""

    max_attempts: int = 3
    backoff: BackoffKind = "exponential"
    delay: float = 1.0
    max_delay: float = 600.0
    jitter: bool = True
    fatal_errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One stage of the pipeline, with the pipeline defaults already merged in."""

    name: str
    handler: str
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    lock_extension: float = DEFAULT_LOCK_EXTENSION
    lock_refresh: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: bool = True
    result_ttl: float = DEFAULT_RESULT_TTL
    # Keep a done job's arguments for result_ttl beside its result (dead, failed and cancelled
    # jobs always keep them); off, a success drops them and its record stays small.
    keep_args: bool = False
    # None: async for coroutine functions, thread otherwise (decided when the handler is imported).
    executor: ExecutorKind | None = None
    next: tuple[str, ...] = ()
    fan_out: bool = False
    # Fan-in: runs once per group (fan-out) with the list of values that reached it.
    join: bool = False
    join_on_failure: JoinOnFailure = "run"
    max_stalls: int = DEFAULT_MAX_STALLS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES
    # Jobs claimed ahead of the free slots; None: one per ten slots (none below ten), and up to
    # eight per slot while the queue's jobs are short (see claim_ahead_short / _medium).
    prefetch: int | None = None
    # Flow control across all workers (rrq_flow.flow): "<n>/s|min|h", starts at once, running cap.
    rate_limit: str | None = None
    rate_burst: int = 1
    max_running: int | None = None
    # Priority of the children handed to this queue; None: a child inherits its parent's.
    priority: int | None = None

    @property
    def claim_ahead(self) -> int:
        """Jobs a worker claims beyond its free slots, so a freed slot need not wait for Redis.

        None below ten slots: a queue that narrow usually runs long jobs, and a job claimed
        ahead there would wait behind them while another worker could have run it.
        """
        if self.rate_limit is not None or self.max_running is not None:
            return 0  # a job held ahead would use a start or a slot another worker could run
        if self.prefetch is not None:
            return self.prefetch
        return self.concurrency // 10

    @property
    def claim_ahead_short(self) -> int:
        """Jobs claimed ahead while the queue's recent jobs are short (a few ms): eight per slot.

        A job claimed ahead then waits about eight jobs' duration (under 80 ms), so no other
        worker waits long for it. The next claim goes out when half of them are left
        (QueueRunner._claim_loop), so its round trip, which costs about as much as a few jobs,
        runs while the other half does: two ahead per slot left too few to cover it, and the
        worker sat idle for a round trip per claim. Eight rather than four: a claim then takes
        about four jobs per slot, so the fixed cost of its call, and of the acknowledgement's,
        is spread over twice the jobs (Redis time per job down ~10 %, worker CPU per job down
        ~15 %). A ``prefetch`` set in the file is used as it is.
        """
        return self._claim_ahead_at_most(8 * self.concurrency)

    @property
    def claim_ahead_medium(self) -> int:
        """Jobs claimed ahead while the queue's recent jobs take under a tenth of a second: one
        per slot (a job claimed ahead waits about one job's duration)."""
        return self._claim_ahead_at_most(self.concurrency)

    def _claim_ahead_at_most(self, n: int) -> int:
        if self.rate_limit is not None or self.max_running is not None:
            return 0
        if self.prefetch is not None:
            return self.prefetch
        return max(n, self.claim_ahead)

    @property
    def rate_interval_ms(self) -> float:
        """Milliseconds between two starts under ``rate_limit`` (0: no limit)."""
        if self.rate_limit is None:
            return 0.0
        from rrq_flow.flow import parse_rate

        count, period = parse_rate(self.rate_limit)
        return period * 1000 / count

    @property
    def initial_lease(self) -> float:
        """Seconds of lease a claim grants: renewable ``lock_extension``, or the whole budget."""
        if self.lock_refresh:
            return self.lock_extension
        return self.timeout + self.lock_extension

    @property
    def hard_lease(self) -> float:
        """Seconds after the start beyond which no renewal extends the lease."""
        return self.timeout + self.lock_extension


CatchUp = Literal["latest", "all", "none"]


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A cron schedule: a job into ``queue`` at every tick (see rrq_flow.schedules)."""

    name: str
    queue: str
    cron: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = "latest"


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    processes: int = 1
    shutdown_grace_period: float = 30.0
    heartbeat_interval: float = 5.0
    metrics_port: int | None = None
    # Loopback by default: the endpoint has no authentication.
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """A loaded, validated ``pipeline.yaml``."""

    pipeline: str
    queues: Mapping[str, QueueConfig]
    redis: RedisSettings = field(default_factory=RedisSettings)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    version: int = 1
    schedules: Mapping[str, ScheduleConfig] = field(default_factory=dict)
    # Hash tags the pipeline's jobs are spread over (rrq_flow.protocol.partitions); 1: one.
    partitions: int = 1
    # The file it came from (None when built in code); the embedded Redis lives beside it.
    source: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.queues, MappingProxyType):
            object.__setattr__(self, "queues", MappingProxyType(dict(self.queues)))
        if not isinstance(self.schedules, MappingProxyType):
            object.__setattr__(self, "schedules", MappingProxyType(dict(self.schedules)))

    def queue(self, name: str) -> QueueConfig:
        """The queue called ``name``; raises :class:`rrq_flow.errors.UnknownQueueError`."""
        try:
            return self.queues[name]
        except KeyError:
            from rrq_flow.errors import UnknownQueueError

            raise UnknownQueueError(name, tuple(self.queues)) from None

    @property
    def keep_args_queues(self) -> frozenset[str]:
        """The queues with ``keep_args: true`` (``rrq_flow.protocol.ops.Protocol.keep_args``)."""
        return frozenset(name for name, q in self.queues.items() if q.keep_args)

    @property
    def state_dir(self) -> Path:
        """Where embedded Redis keeps its socket and data: ``.rrq-flow/`` beside the file."""
        base = self.source.parent if self.source is not None else Path.cwd()
        return base / ".rrq-flow"

    def client(self) -> Client:
        """An async producer/admin client (coredis; use as ``async with``)."""
        from rrq_flow.client.async_client import Client

        return Client(self)

    def sync_client(self) -> SyncClient:
        """A synchronous producer/admin client (redis-py), for web apps and scripts."""
        from rrq_flow.client.sync_client import SyncClient

        return SyncClient(self)

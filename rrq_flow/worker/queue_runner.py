"""Serving one queue: claim → run → acknowledge, plus lease renewal and reaping.

One QueueRunner per queue, each in its own nursery, with its own ``concurrency`` slots, so a busy
queue never starves another. Claims are sized to the free slots plus a small ``prefetch`` (one
script call per batch; eight jobs ahead per slot while the queue's jobs take under
:data:`SHORT_JOB_SECONDS`, one under :data:`MEDIUM_JOB_SECONDS`), so a freed slot starts its next
job without waiting for a claim round trip (for short jobs the next claim goes out when half
of the jobs claimed ahead are left, so its round trip overlaps the other half);
``concurrency`` long-lived runner tasks take claimed
jobs from a channel (no task spawn per job); outcomes are buffered and sent as one script call
per batch while the previous batch is in flight (pipelined acknowledgements, no added latency).
An idle queue blocks on its wake-up list instead of polling.

A prefetched job is leased like a running one (its lease is renewed while it waits). One that
waits longer than half of ``lock_extension`` is given back unstarted (no attempt used): another
worker may be idle, and its hard deadline counts from the claim, so that margin keeps the
deadline past the local timeout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import coredis.exceptions
import trio
import trio_util

from rrq_flow.config.model import QueueConfig
from rrq_flow.connection import MAX_BLOCK_SECONDS
from rrq_flow.errors import DataLossDetected
from rrq_flow.flow import flow_limits
from rrq_flow.logs import JOBS_LOGGER, job_id_var, queue_var
from rrq_flow.protocol.ops import (
    CHILDREN_PER_CALL,
    Call,
    ChildJob,
    ClaimedJob,
    ClaimReply,
    Completion,
    Failure,
    decode_json,
    encode_json,
    ms,
    parse_claim,
    parse_reap,
)
from rrq_flow.worker.context import GroupInfo, JobContext, reset_current, set_current
from rrq_flow.worker.executor import make_runner, resolve_executor, start_process_pool
from rrq_flow.worker.fanout import Expander, stage_and_commit, stageable
from rrq_flow.worker.fast_calls import FastCalls
from rrq_flow.worker.outcome import (
    UnstorableResult,
    cap_bytes,
    describe,
    encode_result,
    type_name,
)
from rrq_flow.worker.partition_slots import SharedSlots
from rrq_flow.worker.policy import classify, error_record, timeout_verdict
from rrq_flow.worker.process_job import ProcessChannel
from rrq_flow.worker.redis_calls import TRANSIENT
from rrq_flow.worker.timeouts import Deadlines
from rrq_flow.worker.wake_connection import wake_connection_for

if TYPE_CHECKING:
    from rrq_flow.worker.worker import Worker

log = logging.getLogger("rrq_flow.worker")
job_log = logging.getLogger(JOBS_LOGGER)

MAX_CLAIM = 500  # jobs per claim call
SHORT_JOB_SECONDS = 0.01  # recent jobs this short: claim eight jobs ahead per slot
MEDIUM_JOB_SECONDS = 0.1  # this short: one ahead per slot
STOP_TOKEN_TTL_MS = 10_000  # a stop token nobody took is gone after this
OUTCOME_WORDS = {
    "OK": "done",
    "RETRY": "failed, will retry",
    "DEAD": "dead",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}
LOG_MESSAGE_BYTES = 500  # of an error message in a log line (the record keeps max_error_bytes)


class Slot:
    """One of a queue's ``concurrency`` runner tasks: the job it runs, and the cancel scope
    that job runs in. The scope is made anew only after a job of the slot was cancelled (a
    timeout, a lost lease, an operator's cancel, shutdown), not per job."""

    __slots__ = ("job", "scope")

    def __init__(self) -> None:
        self.job: RunningJob | None = None
        self.scope = trio.CancelScope()


@dataclass(eq=False, slots=True)
class RunningJob:
    job: ClaimedJob
    slot: Slot
    started: float  # trio clock
    renewed: float  # trio clock when the last successful renewal was *sent*
    deadline: float = math.inf  # trio clock: its timeout (see rrq_flow.worker.timeouts)
    finished: bool = False  # its handler returned or raised
    cancelled: bool = False  # its slot's scope was cancelled for it (see stop_reason)
    stop_reason: str | None = None  # 'lost' | 'unrenewed' | 'cancel' | 'shutdown' | 'timeout'
    settled: bool = False  # the shutdown watchdog already released it

    def cancel(self) -> None:
        """Cancel the handler (at its next checkpoint), if it still runs."""
        self.cancelled = True
        if self.slot.job is self:
            self.slot.scope.cancel()


@dataclass(eq=False)
class BufferedJob:
    """A job claimed ahead (prefetched) and not started yet."""

    job: ClaimedJob
    claimed: float  # trio clock
    renewed: float  # trio clock when the lease was last granted or renewed
    not_before: float = 0.0  # trio clock: a start the rate limit granted ahead waits for this
    # 'lost' (a renewal said so), 'unrenewed' (no renewal got through for lock_extension),
    # 'cancelled' (an operator's cancel, already recorded), 'given back' (waited too long,
    # already released)
    stop_reason: str | None = None


@dataclass
class AckBuffer:
    """Outcomes waiting to be sent; the acker sends everything buffered in one call per kind."""

    completions: list[tuple[Completion, float]] = field(default_factory=list)
    failures: list[tuple[Failure, float]] = field(default_factory=list)
    releases: list[tuple[str, int]] = field(default_factory=list)
    sending: bool = False
    event: trio.Event = field(default_factory=trio.Event)

    def __len__(self) -> int:
        return len(self.completions) + len(self.failures) + len(self.releases)

    def poke(self) -> None:
        self.event.set()


class QueueRunner:
    def __init__(
        self,
        worker: Worker,
        cfg: QueueConfig,
        handler: Callable[..., Any],
        part: int = 0,
        slots: SharedSlots | None = None,
    ):
        self.worker = worker
        self.cfg = cfg
        self.name = cfg.name
        # The partition this runner serves (docs/scaling.md): its keys and scripts, and the
        # queue's concurrency it shares with the runners of the other partitions.
        self.part = part
        self.layout = worker.parts.layouts[part]
        self.protocol = worker.parts.protocols[part]
        self.slots = slots or SharedSlots(cfg.concurrency, 1)
        self.channel = ProcessChannel() if resolve_executor(cfg, handler) == "process" else None
        self.executor, self.run_handler = make_runner(
            cfg, handler, self.channel, lambda: worker.server_offset
        )
        self.fatal_types = worker.fatal_types[cfg.name]
        # An async or thread handler starts the moment its runner calls it (no process to
        # reach, no group to read first): its timeout is set once, from the start.
        self._starts_at_once = self.executor in ("async", "thread") and not cfg.join
        self.tally = worker.stats.tally(cfg.name)
        # Keyed by (id, epoch), not id: after a lost lease this worker may claim a job again
        # while its older attempt is still running or waiting here.
        self.running: dict[tuple[str, int], RunningJob] = {}
        self.buffered: dict[tuple[str, int], BufferedJob] = {}  # claimed, waiting in the channel
        self.claimed = 0  # claimed and not yet finished (waiting in the channel or running)
        # Every job this worker holds a lease on until its outcome is acknowledged: released in
        # one call if the worker dies of an internal error (nothing waits out a lease then).
        self.held: dict[tuple[str, int], ClaimedJob] = {}
        self._uncounted: set[tuple[str, int]] = set()  # releases not tallied (see _lost)
        self._claim_unknown = False  # a claim failed: it may have claimed jobs all the same
        # Since when the claim / acknowledgement loop has been inside one call (None: not in
        # one): a call retried through a refusal (OOM...) shows here, and in `health`.
        self.claiming_since: float | None = None
        self.acking_since: float | None = None
        self.prefetch = cfg.claim_ahead
        self._prefetch_short = cfg.claim_ahead_short  # while recent jobs are short
        self._prefetch_medium = cfg.claim_ahead_medium
        self._recent_seconds: float | None = None  # moving average of handler durations
        self._max_buffer_wait = cfg.lock_extension / 2
        self._stop_key = self.layout.worker_wake(worker.worker_id, cfg.name)
        wake_key = self.layout.queue(cfg.name).wake
        self._wake = wake_connection_for(worker.url, worker.config.redis, wake_key)
        # The claim loop's direct claims share its wake connection (both are its, in turn);
        # the acknowledgements have their own.
        self._claims = FastCalls(worker.caller, self._wake)
        # The claim loop's wait while this runner holds enough (see _claim_loop), and the event
        # of that wait the runners set when the jobs claimed ahead run low.
        self._line_event: trio.Event | None = None
        self._refill: trio.Event | None = None
        self._low_water: int | None = None  # short jobs: claim again at this many waiting
        self._acks_calls = FastCalls(
            worker.caller, wake_connection_for(worker.url, worker.config.redis, wake_key)
        )
        self.deadlines: Deadlines[RunningJob] = Deadlines(self._timed_out)
        self.acks = AckBuffer()
        self.idle = False  # blocked waiting for work (the last claim took all that was ready)
        self.started_jobs = 0
        self._send, self._recv = trio.open_memory_channel[ClaimedJob](math.inf)
        self._flow = flow_limits(cfg)
        self._lease_ms = ms(cfg.initial_lease)
        self._hard_ms = ms(cfg.hard_lease)
        self.result_ttl_ms = ms(cfg.result_ttl)
        # Takeovers are looked for once per lock_extension: a stalled expansion waits that long
        # anyway, and an idle queue pays one cheap call per lease period, not per reap.
        self.expander = Expander(
            worker,
            self.protocol,
            cfg.name,
            self.result_ttl_ms,
            ms(cfg.lock_extension),
            cfg.lock_extension,
        )

    # --- the queue's task tree ---------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the worker stops claiming and every claimed job is settled and sent."""
        queue_var.set(self.name)
        try:
            async with trio.open_nursery() as support:
                support.start_soon(self._acker)
                support.start_soon(self._reaper)
                support.start_soon(self.expander.run)
                support.start_soon(self._unblock_on_stop)
                support.start_soon(self.deadlines.watch)
                if self.cfg.lock_refresh or self._prefetch_short:
                    support.start_soon(self._lease_refresher)
                if self.channel is not None:
                    await self.channel.open()
                    support.start_soon(self.channel.serve)
                    # Before the first claim: a job's timeout never pays for the pool's start-up.
                    await start_process_pool(self.cfg.concurrency)
                async with trio.open_nursery() as runners:
                    for _ in range(self.cfg.concurrency):
                        runners.start_soon(self._runner)
                    try:
                        await self._claim_loop()
                    finally:
                        self._send.close()
                        self._release_buffered()
                        await self._wake.aclose()
                await self.drain_acks()
                support.cancel_scope.cancel()
        finally:
            await self._acks_calls.aclose()

    def locally_idle(self) -> bool:
        return self.idle and self.claimed == 0 and len(self.acks) == 0 and not self.acks.sending

    # --- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        w = self.worker
        wait: float | None = None  # block this long for work before the next claim
        while not w.stopping.is_set():
            # Claims are shielded: never start one once the worker is being torn down. No
            # yield otherwise (every round waits for Redis or for the runners anyway): a yield
            # here, after a claim, let the runners empty the buffer before the next decision.
            await trio.lowlevel.checkpoint_if_cancelled()
            recent = self._recent_seconds
            # Short jobs: the next claim waits for the buffer to run down to half (below).
            # Longer ones: a claim as soon as a slot frees, as the jobs themselves leave the
            # loop time to claim; holding a wave's starts for a claim would only delay them.
            self._low_water = None
            if recent is None or recent >= MEDIUM_JOB_SECONDS:
                prefetch = self.prefetch
            elif recent < SHORT_JOB_SECONDS:
                prefetch = self._prefetch_short
                self._low_water = prefetch // 2
            else:
                prefetch = self._prefetch_medium
            free = self.cfg.concurrency + prefetch - self.slots.claimed
            if w.max_jobs is not None:
                free = min(free, w.max_jobs - w.claimed_total)
                if free <= 0 and self.claimed == 0:
                    w.request_stop("max jobs reached")
                    return
            low = self._low_water
            if free <= 0 or (low is not None and len(self.buffered) > low):
                if w.stopping.is_set():
                    return
                # Before any checkpoint: no wake-up is missed (a freed slot, the claimed-ahead
                # jobs running low, or the stop, which _unblock_on_stop turns into a wake-up of
                # the whole line and of the refill).
                if free <= 0:
                    self._line_event = self.slots.line_up()
                else:
                    # Slots are free but more than half the jobs claimed ahead still wait: the
                    # next claim goes out when the runners have taken them down to half, in
                    # time to arrive before they run out (not a claim per freed slot).
                    self._line_event = self._refill = trio.Event()
                try:
                    await self._line_event.wait()
                finally:
                    self._line_event = self._refill = None
                continue
            if self._claim_unknown:
                await self._give_back_orphans()
            call = self.protocol.claim(
                self.name,
                w.generations[self.part],
                w.worker_id,
                min(free, MAX_CLAIM),
                self._lease_ms,
                self._hard_ms,
                self._flow,
            )
            sent = trio.current_time() if wait is None else None
            if wait is None:
                self.claiming_since = trio.current_time()
                try:
                    reply = parse_claim(await self._claim_directly(call))
                finally:
                    self.claiming_since = None
            else:  # an idle wait: not stuck however long it lasts
                maybe = await self._wait_then_claim(call, wait)
                if maybe is None:  # an error: the next round claims directly
                    wait = None
                    continue
                reply = maybe
            if reply.lost:
                raise DataLossDetected(w.data_loss_message(reply.generation))
            now = trio.current_time()
            for job in reply.jobs:  # no checkpoint until every job is held (see `held`)
                self.held[job.id, job.epoch] = job
                self.claimed += 1
                self.slots.taken()
                w.claimed_total += 1
                not_before = now + (job.start_at - reply.now) / 1000
                self.buffered[job.id, job.epoch] = BufferedJob(job, now, now, not_before)
                self._send.send_nowait(job)
            wait = None
            if len(reply.jobs) < free:
                self.slots.pass_on()  # slots left over: the next waiting partition's turn
            if len(reply.jobs) < free and reply.held == "rate" and reply.next_due is not None:
                # Ready jobs wait for the rate limit, whose next start is known exactly: sleep
                # until then and claim (no wake-up token; the other workers sleep the same).
                await self._sleep_until_allowed(reply, sent)
            elif len(reply.jobs) < free:
                wait = self._wait_time(reply.now, reply.next_due)
                if reply.jobs and wait is not None:
                    # Let the runners start these jobs before this task spends ~0.1 ms of CPU
                    # sending the next wait (trio runs a batch of ready tasks in random order:
                    # two checkpoints put this task behind them either way). Pick-up p50 -0.1 ms.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    await trio.lowlevel.cancel_shielded_checkpoint()

    async def _sleep_until_allowed(self, reply: ClaimReply, sent: float | None) -> None:
        """Wait for the rate limit's next start (server ms in the reply), or a stop."""
        assert reply.next_due is not None
        delay = (reply.next_due - reply.now) / 1000
        if sent is not None:  # the server answered about half a round trip ago
            delay -= (trio.current_time() - sent) / 2
        self.idle = True
        try:
            with trio.move_on_after(max(delay, 0.0)):
                await self.worker.stopping.wait()
        finally:
            self.idle = False

    @staticmethod
    def _wait_time(now: int, next_due: int | None) -> float | None:
        """How long to block for work after a claim that took everything ready (None: don't)."""
        timeout = MAX_BLOCK_SECONDS
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - now) / 1000))
        return timeout if timeout > 0.001 else None

    async def _wait_then_claim(self, call: Call, timeout: float) -> ClaimReply | None:
        """Block for a wake-up token, then claim: one round trip, never a polling sleep.

        BLPOP and the claim go in one write on this queue's own connection (WakeConnection, a
        minimal RESP client: this path is mostly client overhead), so Redis runs the claim the
        moment the BLPOP returns (a token, the timeout, or this worker's own stop token) and
        the job comes back with the wake-up: no second round trip on the pick-up path. The
        claim runs whatever happens to the wait, so the call is never abandoned (shielded, and
        a stop ends it by pushing to this worker's own wake list, not by cancelling it); jobs
        it claims while the worker stops are released by the runners.
        Returns None after an error (the caller claims directly next).
        """
        w = self.worker
        # The last claim took everything ready. Whether the pipeline is drained is decided by the
        # burst monitor from one atomic Redis snapshot; this flag only says "nothing to add here".
        self.idle = True
        try:
            with trio.CancelScope(shield=True), trio.fail_after(w.caller.timeout + timeout):
                _, claimed = await self._wake.wait_then_claim(
                    [self.layout.queue(self.name).wake, self._stop_key],
                    timeout,
                    call.script,
                    call.keys,
                    call.args,
                )
            reply = parse_claim(claimed)
        except coredis.exceptions.NoScriptError:
            return None  # Redis restarted and forgot the scripts: the direct claim reloads them
        except TRANSIENT as exc:  # any failure, error replies (BUSY, OOM...) included
            w.caller.outage.failed(exc)
            self._claim_unknown = True
            await trio.sleep(0.1)
            return None
        finally:
            self.idle = False
        w.caller.outage.ok()
        return reply

    async def _claim_directly(self, call: Call) -> Any:
        """The claim call, retried with capped backoff; notes when a failed attempt may have
        claimed jobs after all (a timeout: Redis may run it later, e.g. after a pause)."""
        delay = 0.05
        while True:
            try:
                return await self._claims.once(call, self._mark_claim_unknown)
            except TRANSIENT:
                self._claim_unknown = True
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _mark_claim_unknown(self) -> None:
        self._claim_unknown = True

    async def _give_back_orphans(self) -> None:
        """Release the jobs a claim whose reply never arrived gave this worker.

        Nobody runs them: left alone, their lease would run out and the reaper would count a
        stall against jobs that did nothing wrong. Reads the queue's active set (only after a
        failed claim) and releases, fenced by epoch, what this worker owns but does not hold.
        """
        w = self.worker
        try:
            with trio.CancelScope(shield=True), trio.fail_after(w.caller.timeout):
                ids = [
                    str(i) for i in await w.redis.zrange(self.layout.queue(self.name).active, 0, -1)
                ]
                async with w.redis.pipeline(transaction=False) as pipe:
                    fields = [pipe.hmget(self.layout.job(i), ["owner", "epoch"]) for i in ids]
                records = [list(await f) for f in fields]
        except TRANSIENT:
            return  # still failing: try again before the next claim
        self._claim_unknown = False
        orphans = []
        for job_id, (owner, epoch) in zip(ids, records, strict=True):
            if owner == w.worker_id and epoch is not None:
                key = (job_id, int(epoch))
                if key not in self.held:
                    orphans.append(key)
        if not orphans:
            return
        log.warning("giving back %d job(s) claimed by a call whose reply was lost", len(orphans))
        for key in orphans:
            self._uncounted.add(key)
            self.held[key] = ClaimedJob(key[0], key[1], 0, 0, "[]", "{}", 0, "")
        self.acks.releases.extend(orphans)
        self.acks.poke()

    async def _unblock_on_stop(self) -> None:
        """When the worker stops, end this queue's blocking wait at once (a stop token)."""
        w = self.worker
        await w.stopping.wait()
        self.slots.wake_all()  # claim loops waiting for a free slot see the stop
        if self._refill is not None:
            self._refill.set()  # and this one, if it waits for its buffer to run low
        try:
            with trio.fail_after(w.caller.timeout):
                async with w.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(self._stop_key, ["stop"])
                    pipe.pexpire(self._stop_key, STOP_TOKEN_TTL_MS)
        except TRANSIENT:
            pass  # Redis is away: the wait ends with its own timeout or error

    # --- running -----------------------------------------------------------------------------

    async def _runner(self) -> None:
        """One slot: runs claimed jobs one after another, in the slot's cancel scope."""
        slot = Slot()
        while True:
            more = True  # unless the channel ends: a cancelled job leaves with no answer
            with slot.scope:
                more = await self._serve_slot(slot)
            rj, slot.job = slot.job, None
            if rj is not None:  # its handler was cancelled: the slot's scope absorbed it
                self._settle(rj, None, None, None, trio.current_time() - rj.started)
            if not more:
                return
            slot.scope = trio.CancelScope()

    async def _serve_slot(self, slot: Slot) -> bool:
        """Run jobs until one of them is cancelled (True: more may come) or the channel ends.

        A job already waiting is taken without a checkpoint: the buffer holds at most
        ``concurrency + prefetch`` jobs and is refilled only by the claim loop (after this task
        yields), so a slot runs at most that many in a row without yielding, and a no-op job
        costs no task switch.
        """
        recv, limiter = self._recv, self.slots.limiter
        while True:
            try:
                job = recv.receive_nowait()
            except trio.WouldBlock:
                try:
                    job = await recv.receive()
                except trio.EndOfChannel:
                    return False
            except trio.EndOfChannel:
                return False
            if limiter is None:
                await self._start(slot, job)
            else:  # the queue's cap across partitions (partition_slots.py); prefetched meanwhile
                async with limiter:
                    await self._start(slot, job)
            if slot.scope.cancel_called:
                return True  # a fresh scope for the next job

    async def _start(self, slot: Slot, job: ClaimedJob) -> None:
        held = self.buffered[job.id, job.epoch]
        now = trio.current_time()
        if held.not_before > now:
            # A start the rate limit granted ahead: it is due then, not now.
            async with trio_util.move_on_when(self.worker.stopping.wait):
                await trio.sleep_until(held.not_before)
            now = trio.current_time()
        del self.buffered[job.id, job.epoch]
        low = self._low_water
        if low is not None and self._line_event is not None and len(self.buffered) <= low:
            await self._claim_first()
        waited = now - max(held.claimed, held.not_before)
        if held.stop_reason in ("given back", "cancelled"):
            pass  # already settled by the lease refresher
        elif held.stop_reason in ("lost", "unrenewed"):
            self._lost(job, held.stop_reason)
            log.warning("job %s lost its lease while prefetched; not started", job.id)
        elif self.worker.stopping.is_set() or waited > self._max_buffer_wait:
            # Claimed but never started: give it back, no attempt used. After a long wait
            # its hard deadline (counted from the claim) would cut into its timeout.
            self._release(job)
        else:
            await self._run_one(slot, job, held.renewed, now)
            return
        self._slot_done()

    async def _claim_first(self) -> None:
        """The jobs claimed ahead ran low while the claim loop waits: wake it (when it waits
        for that), and yield until it has sent its claim, so that claim's round trip overlaps
        the jobs still waiting here instead of following them. (Trio runs a woken task in its
        next batch, and a runner takes waiting jobs without a checkpoint: without this the
        claim went out only once the runners had emptied the buffer, and the worker then sat
        idle for a whole round trip per claim.)"""
        line = self._line_event
        if self._refill is not None:
            self._refill.set()
        if line is None or not line.is_set():
            return
        while self._line_event is line:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _release_buffered(self) -> None:
        """Give back every prefetched job at once when the worker stops claiming."""
        while True:
            try:
                job = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self.buffered.pop((job.id, job.epoch), None)
            self._release(job)
            self._slot_done()

    def _slot_done(self) -> None:
        self.claimed -= 1
        self.slots.done()

    async def _run_one(self, slot: Slot, job: ClaimedJob, renewed: float, t0: float) -> None:
        """Run one attempt in ``slot``; settle it, unless it is cancelled (a trio.Cancelled
        then leaves this call with ``slot.job`` still set: the runner settles it)."""
        cfg, w = self.cfg, self.worker
        # The timeout counts from the moment the handler starts (in its process, for
        # `executor: process`); until then, at most half a lease more (the hard deadline).
        latest = t0 + cfg.timeout + cfg.lock_extension / 2
        rj = RunningJob(job, slot, t0, renewed)
        deadlines = self.deadlines
        if self._starts_at_once:
            latest, started = (
                t0 + cfg.timeout,
                _nothing,
            )  # it starts now: no later start to wait for
        else:

            def started() -> None:
                deadlines.move(rj, trio.current_time() + cfg.timeout)

        self.running[job.id, job.epoch] = rj
        self.started_jobs += 1
        ctx = JobContext(
            id=job.id,
            queue=self.name,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            epoch=job.epoch,
            enqueued_at=job.enqueued_at / 1000,
            deadline=w.server_time_at(t0 + cfg.timeout),
            worker_id=w.worker_id,
            parent=job.parent or None,
            logger=w.job_logger,
        )
        ctx_token = set_current(ctx)
        id_token = job_id_var.set(job.id)
        result: Any = None
        error: BaseException | None = None
        slot.job = rj
        deadlines.start(rj, latest)
        try:
            if cfg.join:
                ctx.group = await self._group_of(job.id)
            args = decode_json(job.args_json)
            kwargs = {} if job.kwargs_json == "{}" else decode_json(job.kwargs_json)
            result = await self.run_handler(args, kwargs, ctx, started)
        except trio.Cancelled:
            # Ours (the slot's scope absorbs it; the runner settles the job) or the worker's.
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt... are outcomes
            error = exc
        finally:
            deadlines.done(rj)
            reset_current(ctx_token)
            job_id_var.reset(id_token)
            if ctx.pause_requests:
                # Before the slot frees and the outcome is sent: this worker's next claim
                # already sees the pause.
                await self._pause_queue(max(ctx.pause_requests))
            del self.running[job.id, job.epoch]
            self._slot_done()
        slot.job = None
        duration = trio.current_time() - t0
        recent = self._recent_seconds
        self._recent_seconds = duration if recent is None else recent + (duration - recent) / 16
        self._settle(rj, ctx, result, error, duration)

    def _timed_out(self, rj: RunningJob) -> None:
        self._stop(rj, "timeout")

    async def _group_of(self, job_id: str) -> GroupInfo | None:
        """The group a join job closes (written by complete.lua when it made the job)."""
        text = await self.worker.redis.hget(self.layout.job(job_id), "group")
        return GroupInfo.from_json(text) if text else None

    def _settle(
        self,
        rj: RunningJob,
        ctx: JobContext | None,
        result: Any,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """Turn an attempt's outcome into an acknowledgement (or into nothing, when fenced); a
        failure to record it counts a failed attempt."""
        id_token = job_id_var.set(rj.job.id)  # its log lines name the job
        try:
            job, cfg = rj.job, self.cfg
            if rj.settled:
                return
            if rj.cancelled:
                reason = rj.stop_reason or "timeout"
                if reason in ("lost", "unrenewed"):
                    self._lost(job, reason)
                    log.warning("lease lost; outcome of attempt %d dropped", job.attempt)
                elif reason == "shutdown":
                    self._release(job)
                elif reason == "cancel":
                    self._fail_cancelled(job, duration)
                else:
                    verdict = timeout_verdict(cfg.timeout, job.attempt, cfg.retry)
                    log.warning("attempt %d timed out after %gs", job.attempt, cfg.timeout)
                    self._fail(
                        Failure(job.id, job.epoch, verdict.error_json, "retry", ms(verdict.delay)),
                        duration,
                    )
                return
            assert ctx is not None  # only a cancelled attempt is settled without its context
            if error is not None:
                verdict = classify(
                    error, job.attempt, cfg.retry, self.fatal_types, cfg.max_error_bytes
                )
                log.info(
                    "attempt %d failed: %s: %s",
                    job.attempt,
                    type_name(error),
                    describe(error, LOG_MESSAGE_BYTES),
                )
                failure = Failure(job.id, job.epoch, verdict.error_json, verdict.action)
                if verdict.action == "retry":
                    failure = Failure(
                        job.id, job.epoch, verdict.error_json, "retry", ms(verdict.delay)
                    )
                self._fail(failure, duration)
                return
            try:
                # A fan-out's items live on as its children; the parent keeps no copy of the list.
                stored = None if cfg.fan_out and cfg.next else result
                result_json = encode_result(stored, cfg.max_result_bytes)
                completion = self.worker.handoff.completion(
                    cfg, job.id, job.epoch, result, result_json, ctx.outbox
                )
            except Exception as exc:  # the result is the user's object
                # Storing it again would fail again: dead-letter now, no retry.
                unstorable = isinstance(exc, UnstorableResult)
                why = str(exc) if unstorable else f"cannot hand off the result: {describe(exc)}"
                log.warning(
                    "result not stored, dead-lettering: %s", cap_bytes(why, LOG_MESSAGE_BYTES)
                )
                record = error_record(
                    None if unstorable else exc,
                    job.attempt,
                    why,
                    "UnstorableResult" if unstorable else None,
                    max_error_bytes=cfg.max_error_bytes,
                )
                self._fail(Failure(job.id, job.epoch, encode_json(record), "dead"), duration)
                return
            self.acks.completions.append((completion, duration))
            self.acks.poke()
        except Exception:
            # A bug of ours. Releasing would give the attempt back and could loop the job
            # forever; recording a failed attempt keeps it within max_attempts.
            job = rj.job
            log.exception("could not record the outcome; counting a failed attempt")
            record = error_record(None, job.attempt, "rrq-flow could not record the outcome")
            self._fail(Failure(job.id, job.epoch, encode_json(record), "retry"), 0.0)
        finally:
            job_id_var.reset(id_token)

    async def _pause_queue(self, seconds: float) -> None:
        """A handler asked to pause its queue (e.g. after a 429): extend the pause to now + it."""
        w = self.worker
        try:
            with trio.CancelScope(shield=True), trio.fail_after(w.caller.timeout):
                for protocol in w.parts.protocols:  # every partition of the queue
                    await w.caller.once(protocol.pause(self.name, "extend", ms(seconds)))
        except (*TRANSIENT, trio.TooSlowError):  # type: ignore[misc]
            log.warning("could not pause queue %s: Redis did not answer", self.name)
            return
        log.warning("queue %s paused for %gs by its handler", self.name, seconds)

    def _fail(self, failure: Failure, duration: float) -> None:
        self.acks.failures.append((failure, duration))
        self.acks.poke()

    def _release(self, job: ClaimedJob, *, counted: bool = True) -> None:
        if not counted:
            self._uncounted.add((job.id, job.epoch))
        self.acks.releases.append((job.id, job.epoch))
        self.acks.poke()

    def _lost(self, job: ClaimedJob, reason: str) -> None:
        """A lease this worker no longer holds, or could not renew for a whole lock_extension.

        In the second case Redis may just have been away (paused, unreachable): the lease may
        still be ours, so it is given back (fenced by its epoch; no attempt used), rather than
        left to run out once Redis serves again and be counted as this job's stall.
        """
        self.tally.lost += 1
        if reason == "unrenewed":
            self._release(job, counted=False)
        else:
            self.held.pop((job.id, job.epoch), None)

    # --- acknowledging -----------------------------------------------------------------------

    async def _acker(self) -> None:
        while True:
            await self.acks.event.wait()
            self.acks.event = trio.Event()
            self.acking_since = trio.current_time()
            while len(self.acks):
                await self._send_acks()
                self.acking_since = trio.current_time()
            self.acking_since = None

    async def drain_acks(self) -> None:
        """Wait until every buffered outcome has been sent and answered."""
        while len(self.acks) or self.acks.sending:
            await trio.sleep(0.005)

    async def _send_acks(self) -> None:
        acks, w = self.acks, self.worker
        completions, acks.completions = acks.completions, []
        failures, acks.failures = acks.failures, []
        releases, acks.releases = acks.releases, []
        acks.sending = True
        try:
            for batch in _complete_batches(completions):
                call = self.protocol.complete(
                    self.name, w.worker_id, self.result_ttl_ms, [c for c, _ in batch]
                )
                verdicts = await self._acks_calls.until_done(call)
                for (c, duration), verdict in zip(batch, verdicts, strict=True):
                    self.held.pop((c.id, c.epoch), None)
                    self._count(verdict, duration, c.id)
            for c, duration in completions:
                if stageable(c):  # a big fan-out: in bounded steps
                    verdict = await stage_and_commit(
                        w, self.protocol, self.name, self._lease_ms, self.result_ttl_ms, c
                    )
                    if verdict in ("OK", "ALREADY_DONE"):
                        self.expander.add(c.id)
                    self.held.pop((c.id, c.epoch), None)
                    self._count(verdict, duration, c.id)
            if failures:
                call = self.protocol.fail(
                    self.name,
                    w.worker_id,
                    self.result_ttl_ms,
                    self.cfg.dead_letter,
                    [f for f, _ in failures],
                )
                verdicts = await self._acks_calls.until_done(call)
                for (f, duration), verdict in zip(failures, verdicts, strict=True):
                    self.held.pop((f.id, f.epoch), None)
                    self._count(verdict, duration, f.id)
            if releases:
                call = self.protocol.release(self.name, w.worker_id, self.result_ttl_ms, releases)
                verdicts = await self._acks_calls.until_done(call)
                for key, verdict in zip(releases, verdicts, strict=True):
                    self.held.pop(key, None)
                    if key in self._uncounted:
                        self._uncounted.discard(key)
                        continue  # a lost lease given back: counted as lost already
                    if verdict in ("OK", "ALREADY_DONE"):
                        self.tally.released += 1
                    elif verdict == "CANCELLED":  # an operator's cancel, honoured on the way out
                        self.tally.cancelled += 1
                    else:
                        self.tally.stale += 1
        finally:
            acks.sending = False

    def _count(self, verdict: str, duration: float, job_id: str) -> None:
        t = self.tally
        if verdict == "OK":
            t.done += 1
        elif verdict == "RETRY":
            t.retried += 1
        elif verdict in ("DEAD", "FAILED"):
            t.dead += 1
            log.warning("job %s %s", job_id, "dead-lettered" if verdict == "DEAD" else "failed")
        elif verdict == "CANCELLED":
            t.cancelled += 1
        elif verdict == "STALE":
            t.stale += 1
            log.warning("job %s: outcome rejected, another worker owns it now (fenced)", job_id)
            return
        else:  # ALREADY_DONE: a repeated call after a lost reply; counted the first time
            return
        job_log.info(
            "job %s %s: queue %s, %.3fs", job_id, OUTCOME_WORDS[verdict], self.name, duration
        )
        t.add_duration(duration)
        self.worker.notify("job_finished", self.name, verdict, duration)

    # --- leases ------------------------------------------------------------------------------

    async def _lease_refresher(self) -> None:
        """Renew leases every third of ``lock_extension`` (one call per batch): running jobs'
        and prefetched ones'.

        A renewal answered STALE or DEADLINE, or no successful renewal for a whole
        ``lock_extension`` (Redis unreachable), cancels the handler: the lease is gone and the
        outcome would be rejected anyway. CANCEL does the same for an operator's cancel. A
        prefetched job in either case is marked, and its runner drops or cancels it unstarted.
        """
        ext = self.cfg.lock_extension
        every = ext / 3
        tick = min(max(every / 2, 0.02), 5.0)
        w = self.worker
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            self._give_back_waited_too_long(now)
            if not self.cfg.lock_refresh:
                continue
            due: list[RunningJob | BufferedJob] = []
            leased: list[RunningJob | BufferedJob] = [*self.running.values()]
            leased += self.buffered.values()
            for held in leased:
                if held.stop_reason is not None:
                    continue
                if now - held.renewed >= ext:
                    self._stop(held, "unrenewed")
                    w.notify("lease_lost", self.name)
                elif now - held.renewed >= every:
                    due.append(held)
            if not due:
                continue
            call = self.protocol.refresh(
                self.name, w.worker_id, self._lease_ms, [(h.job.id, h.job.epoch) for h in due]
            )
            try:
                verdicts = await w.caller.once(call)
            except TRANSIENT:
                continue
            for held, verdict in zip(due, verdicts, strict=True):
                if verdict == "OK":
                    held.renewed = now
                elif verdict == "CANCEL":
                    self._cancel(held)
                else:
                    log.warning("lease renewal of job %s answered %s", held.job.id, verdict)
                    self._stop(held, "lost")
                    w.notify("lease_lost", self.name)

    def _give_back_waited_too_long(self, now: float) -> None:
        """Release prefetched jobs stuck behind long-running ones, so an idle worker gets them.

        They stay counted as claimed until their runner pops them: this worker must not claim
        them straight back.
        """
        for held in self.buffered.values():
            if held.stop_reason is None and now - held.claimed > self._max_buffer_wait:
                held.stop_reason = "given back"
                self._release(held.job)

    def _cancel(self, held: RunningJob | BufferedJob) -> None:
        """An operator's cancel: stop the handler, or record a prefetched job cancelled now."""
        if isinstance(held, RunningJob):
            self._stop(held, "cancel")
            return
        held.stop_reason = "cancelled"
        self._fail_cancelled(held.job, 0.0)

    def _fail_cancelled(self, job: ClaimedJob, duration: float) -> None:
        """Record an operator's cancel as this attempt's outcome."""
        record = error_record(None, job.attempt, "cancelled by an operator", "Cancelled")
        self._fail(Failure(job.id, job.epoch, encode_json(record), "cancel"), duration)

    @staticmethod
    def _stop(held: RunningJob | BufferedJob, reason: str) -> None:
        if held.stop_reason is None:
            held.stop_reason = reason
        if isinstance(held, RunningJob):
            held.cancel()

    def cancel_all(self, reason: str) -> None:
        for rj in self.running.values():
            self._stop(rj, reason)

    def stuck_for(self, now: float) -> tuple[float, float]:
        """Seconds the claim and the acknowledgement loop have been inside their current call."""
        claim = now - self.claiming_since if self.claiming_since is not None else 0.0
        ack = now - self.acking_since if self.acking_since is not None else 0.0
        return claim, ack

    # --- reaping -----------------------------------------------------------------------------

    async def _reaper(self) -> None:
        """Bring back jobs whose lease expired, at most once per interval across all workers."""
        interval = reap_interval(self.cfg)
        w = self.worker
        call = self.protocol.reap(
            self.name,
            guard_ms=ms(interval),
            max_stalls=self.cfg.max_stalls,
            dead_letter=self.cfg.dead_letter,
            result_ttl_ms=self.result_ttl_ms,
            gap_ms=ms(serving_gap(interval)),
            grace_ms=ms(outage_grace(w.config.workers.heartbeat_interval)),
        )
        while True:
            try:
                reply = parse_reap(await w.caller.once(call))
            except TRANSIENT:
                reply = None
            if reply is not None and not reply.guarded:
                if reply.requeued:
                    log.warning("recovered %d job(s) whose lease expired", reply.requeued)
                    w.notify("jobs_recovered", self.name, reply.requeued)
                for job_id in reply.dead:
                    log.warning("job %s dead-lettered: stalled too many times", job_id)
            await trio.sleep(interval)


def _nothing() -> None:
    pass


def serving_gap(interval: float) -> float:
    """A silence between reap calls longer than this means Redis was not serving (or no worker
    ran): every live worker calls reap every ``interval``; the margin absorbs a loaded host."""
    return 2 * interval + 1.5


def outage_grace(heartbeat_interval: float) -> float:
    """How long a lease that expired during such a silence waits for its owner to show up
    (renew it, or at least send a heartbeat) before the reaper decides it was a stall."""
    return 3 * heartbeat_interval + 1.0


def _complete_batches(
    completions: list[tuple[Completion, float]],
) -> list[list[tuple[Completion, float]]]:
    """The completions with inline children, in calls of at most CHILDREN_PER_CALL children."""
    batches: list[list[tuple[Completion, float]]] = []
    current: list[tuple[Completion, float]] = []
    size = 0
    for item in completions:
        n = len(item[0].children)
        if stageable(item[0]):
            continue
        if current and size + n > CHILDREN_PER_CALL:
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        batches.append(current)
    return batches


def reap_interval(cfg: QueueConfig) -> float:
    """How often expired leases are looked for: a quarter of ``lock_extension``, 50 ms .. 5 s.

    A dead worker's job is back in its queue at most ``lock_extension`` + this after the
    worker's last renewal.
    """
    return min(max(cfg.lock_extension / 4, 0.05), 5.0)


__all__ = [
    "BufferedJob",
    "ChildJob",
    "QueueRunner",
    "RunningJob",
    "outage_grace",
    "reap_interval",
    "serving_gap",
]

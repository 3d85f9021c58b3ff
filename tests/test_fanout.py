"""Big fan-outs in bounded steps (docs/protocol.md, "Fan-out in bounded steps"): stage under the
lease, commit to `expanding`, expand in chunks; crashes between any two calls; the takeover of a
parent whose worker died; and a real worker's fan-out watched through SLOWLOG."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio

from rrq_flow.config import load
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import ChildJob, Completion, GroupSpec, parse_expand
from rrq_flow.redis_server import start_redis_server
from rrq_flow.worker.worker import Worker
from tests.conftest import make_pipeline, make_queue
from tests.test_protocol_scripts import TTL, Proto

ROOT = Path(__file__).resolve().parent.parent
SLOW_US = 50_000  # the bound for one script call: 50 ms (SLOWLOG logs from here)
# The default run's bound. SLOWLOG measures wall time, and on a 2-core machine running 8 test
# suites a script needing 5 ms of CPU was seen to take 73 ms while waiting for a core; the
# 50 ms bound is asserted by the `slow` test (CI), this one catches the unbounded kind (12.9 s).
LOADED_US = 500_000


@pytest.fixture
def p(sync_redis: redis.Redis) -> Proto:
    return Proto(sync_redis)


def kids(parent: str, n: int, queue: str = "next") -> list[ChildJob]:
    return [ChildJob(queue, f"{parent}:{queue}:{i}", f"[{i}]", "{}", 3) for i in range(n)]


def stage(p: Proto, worker: str, parent: str, epoch: int, offset: int, chunk: list[ChildJob]):
    return p.run(p.p.stage("q", worker, parent, epoch, offset, 30_000, chunk))


def commit(p: Proto, parent: str, epoch: int, staged: int, worker: str = "w1") -> list[str]:
    return p.complete(worker, [Completion(parent, epoch, "null", (), staged=staged)])


def expand(p: Proto, parent: str = "", limit: int = 500, idle_ms: int = 0):
    return parse_expand(p.run(p.p.expand("q", parent, limit, TTL, idle_ms)))


def test_stage_commit_expand_creates_every_child_once(p: Proto) -> None:
    p.enqueue("a")
    epoch = p.claim_one("a").epoch
    children = kids("a", 1200)
    assert stage(p, "w1", "a", epoch, 0, children[:700]) == "OK"
    assert stage(p, "w1", "a", epoch, 700, children[700:]) == "OK"
    assert commit(p, "a", epoch, 1200) == ["OK"]
    rec = p.job("a")
    assert (rec["status"], rec["children"], rec["fanout_total"]) == ("expanding", "0", "1200")
    assert p.r.zscore(p.q().expanding, "a") is not None and p.r.zcard(p.q().active) == 0
    assert p.r.pttl(p.layout.job("a")) == -1  # unfinished: no TTL
    assert [expand(p, "a").state for _ in range(3)] == ["MORE", "MORE", "DONE"]
    rec = p.job("a")
    assert (rec["status"], rec["children"]) == ("done", "1200")
    assert 0 < p.r.pttl(p.layout.job("a")) <= TTL
    assert 0 < p.r.pttl(p.layout.job_children("a")) <= TTL
    assert p.r.lrange(p.layout.job_children("a"), 0, -1) == [c.id for c in children]
    assert p.r.zcard(p.q("next").ready) == 1200
    assert p.r.hget(p.q("next").stats, "enqueued") == "1200"
    assert p.r.hget(p.q().stats, "done") == "1"
    assert not p.r.exists(p.layout.fanout("a", epoch), p.q().expanding)
    assert p.job("a:next:1199")["parent"] == "a"
    assert expand(p, "a").state == "NONE"  # a repeat after the end changes nothing


def test_stage_is_fenced_ordered_and_repeatable(p: Proto) -> None:
    p.enqueue("a")
    epoch = p.claim_one("a").epoch
    children = kids("a", 10)
    snap = p.snapshot()
    assert stage(p, "w2", "a", epoch, 0, children) == "STALE"
    assert stage(p, "w1", "a", epoch + 1, 0, children) == "STALE"
    assert p.snapshot() == snap
    assert stage(p, "w1", "a", epoch, 0, children[:4]) == "OK"
    snap = p.snapshot()
    assert stage(p, "w1", "a", epoch, 0, children[:4]) == "ALREADY_DONE"  # lost reply, resent
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        stage(p, "w1", "a", epoch, 6, children[6:])  # a gap
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        commit(p, "a", epoch, 10)  # 4 staged, not 10
    assert p.snapshot() == snap


def test_an_attempt_that_ends_without_commit_leaves_no_staging(p: Proto) -> None:
    """Reaped (its worker died mid-staging), released or failed: the staging list goes, the
    stale owner cannot add to or commit it, and the next attempt stages afresh."""
    p.enqueue("a")
    epoch = p.claim_one("a").epoch
    children = kids("a", 10)
    stage(p, "w1", "a", epoch, 0, children[:5])
    p.expire_lease("a")
    assert p.reap().requeued == 1
    assert not p.r.exists(p.layout.fanout("a", epoch))
    assert stage(p, "w1", "a", epoch, 5, children[5:]) == "STALE"
    assert commit(p, "a", epoch, 10) == ["STALE"]
    epoch2 = p.claim_one("a", worker="w2").epoch
    assert stage(p, "w2", "a", epoch2, 0, children) == "OK"
    assert p.release("w2", [("a", epoch2)]) == ["OK"]
    assert not p.r.exists(p.layout.fanout("a", epoch2))
    epoch3 = p.claim_one("a").epoch
    assert stage(p, "w1", "a", epoch3, 0, children) == "OK"
    assert commit(p, "a", epoch3, 10, "w1") == ["OK"]
    assert commit(p, "a", epoch3, 10, "w1") == ["ALREADY_DONE"]
    assert expand(p, "a").state == "DONE"
    assert p.r.zcard(p.q("next").ready) == 10


def test_a_stalled_expansion_is_taken_over(p: Proto) -> None:
    p.enqueue("a", "b")
    epochs = {j.id: j.epoch for j in p.claim("w1", 2).jobs}
    for parent in ("a", "b"):
        stage(p, "w1", parent, epochs[parent], 0, kids(parent, 30))
        assert commit(p, parent, epochs[parent], 30) == ["OK"]
    assert expand(p, "a", limit=10).state == "MORE"  # then its worker died
    assert expand(p, idle_ms=3_600_000).state == "NONE"  # not idle long enough
    done = set()
    for _ in range(8):
        reply = expand(p, limit=10)
        if reply.state == "DONE":
            done.add(reply.parent)
    assert done == {"a", "b"} and expand(p).state == "NONE"
    assert p.r.zcard(p.q("next").ready) == 60
    assert p.r.hget(p.q("next").stats, "enqueued") == "60"


def test_expand_checks_every_child_before_writing(p: Proto) -> None:
    p.enqueue("a")
    epoch = p.claim_one("a").epoch
    stage(p, "w1", "a", epoch, 0, kids("a", 5))
    commit(p, "a", epoch, 5)
    p.r.set(p.layout.job("a:next:3"), "x")
    snap = p.snapshot()
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        expand(p, "a")
    assert p.snapshot() == snap


def test_a_staged_group_opens_at_commit_and_closes_only_after_the_last_chunk(p: Proto) -> None:
    """A group-opening fan-out in bounded steps: children of kind 'join' arrive chunk by chunk,
    yet the join is created only by the last expand call, once, with the values in order."""
    p.enqueue("a")
    epoch = p.claim_one("a").epoch
    values = [
        ChildJob("j", f"a:j:{i}", f"{i * 3}", "{}", 3, kind="join", branch=i) for i in range(250)
    ]
    spec = GroupSpec(250, "j", "a:j:join", 3, 1_000_000, "run")
    assert stage(p, "w1", "a", epoch, 0, values) == "OK"
    done = p.complete("w1", [Completion("a", epoch, "null", (), spec, staged=250)])
    assert done == ["OK"]
    group = p.layout.prefix + "group:a"
    assert p.r.hget(group, "pending") == "1" and p.job("a")["group_join"] == "a:j:join"
    assert [expand(p, "a", limit=100).state for _ in range(2)] == ["MORE", "MORE"]
    assert p.r.zcard(group + ":values") == 200 and not p.r.exists(p.layout.job("a:j:join"))
    p.r.set(group + ":failed", "x")  # a wrong-typed group key: the last chunk writes nothing
    snap = p.snapshot()
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        expand(p, "a", limit=100)
    assert p.snapshot() == snap
    p.r.delete(group + ":failed")
    assert expand(p, "a", limit=100).state == "DONE"
    join = p.job("a:j:join")
    assert join["args"] == "[[" + ",".join(str(i * 3) for i in range(250)) + "]]"
    assert p.job("a")["status"] == "done" and not p.r.exists(group)
    assert expand(p, "a").state == "NONE"


# --- a real worker ------------------------------------------------------------------------------


@pytest.fixture
def slowlog(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of its own, recording every command slower than 50 ms in SLOWLOG.

    SLOWLOG measures wall time: on a machine shared by many busy processes a script that needs
    5 ms of CPU can take 100 ms while the server waits for a core. So this server runs at the
    highest scheduling priority where that is allowed, and what is measured is the script's
    own work.
    """
    base = Path(tempfile.mkdtemp(prefix="rrqf-"))
    server = start_redis_server(base, unix_socket=base / "r.sock", appendonly=False)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, server.pid, -20)
    r = redis.Redis(unix_socket_path=str(base / "r.sock"), decode_responses=True)
    r.config_set("slowlog-log-slower-than", SLOW_US)
    r.config_set("slowlog-max-len", 10_000)
    r.slowlog_reset()
    try:
        yield server.url, r
    finally:
        r.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


O1_COMMANDS = {"HINCRBY", "HSET", "HGET", "INCR", "SET", "GET", "PING", "ZADD", "ZSCORE", "TIME"}


def check_slowlog(r: redis.Redis, bound_us: int) -> str:
    """Assert that no script call in SLOWLOG took longer than ``bound_us``; return a summary.

    A constant-time command in SLOWLOG means the server itself was stalled (descheduled or
    throttled by a loaded machine) while it ran: then the loaded bound applies instead, and the
    summary says so.
    """
    scripts, stalls = [], []
    for e in r.slowlog_get(100_000):
        command = e["command"]
        command = command.decode() if isinstance(command, bytes) else str(command)
        name = command.split()[0].upper()
        if name in ("EVALSHA", "EVAL", "EVAL_RO", "EVALSHA_RO"):
            scripts.append((int(e["duration"]), command[:80]))
        elif name in O1_COMMANDS:
            stalls.append((int(e["duration"]), command[:40]))
    bound = bound_us if not stalls else max(bound_us, LOADED_US)
    slowest = max(scripts, default=None)
    summary = f"{len(scripts)} script call(s) over {SLOW_US} µs, slowest {slowest}"
    if stalls:
        summary += f"; the server stalled (e.g. {max(stalls)}): bound {bound} µs"
    assert [sc for sc in scripts if sc[0] > bound] == [], summary
    return summary


async def fan_out_with_a_worker(
    r: redis.Redis, redis_url: str, n: int, limit: float, bound_us: int
) -> float:
    """Run a fan-out of ``n`` items with an in-process worker; check it and return seconds."""
    cfg = make_pipeline(
        redis_url,
        make_queue("split", "tests.stage_handlers:numbers", next=("each",), fan_out=True),
        make_queue("each", "tests.stage_handlers:double"),
    )
    layout = KeyLayout("t")
    with cfg.sync_client() as client:
        parent = client.enqueue("split", n)
        started = time.monotonic()
        worker = Worker(cfg, url=redis_url, burst=True, handle_signals=False, queues=["split"])
        with trio.fail_after(limit):
            code = await worker.run()
        took = time.monotonic() - started
        info = client.job(parent)
        assert code == 0 and info.status == "done" and info.children == n
        assert info.result is None  # the items live on as the children's arguments
        assert client.children(parent, 0, 2) == [f"{parent}:each:{i}" for i in range(3)]
    assert r.llen(layout.job_children(parent)) == n
    assert r.zcard(layout.queue("each").ready) == n
    assert int(r.hget(layout.queue("each").stats, "enqueued") or 0) == n
    assert r.memory_usage(layout.job(parent)) < 4096, r.hgetall(layout.job(parent))
    summary = check_slowlog(r, bound_us)
    print(f"fan-out of {n} items: {took:.1f}s; SLOWLOG: {summary}")
    return took


async def test_worker_fan_out_of_20000_items_never_runs_a_slow_script(
    slowlog: tuple[str, redis.Redis],
) -> None:
    url, r = slowlog
    await fan_out_with_a_worker(r, url, 20_000, limit=120, bound_us=LOADED_US)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_worker_fan_out_of_a_million_items(slowlog: tuple[str, redis.Redis]) -> None:
    """The issue's size; CI runs it smaller with RRQ_FANOUT_ITEMS (the bounds do not change)."""
    url, r = slowlog
    items = int(os.environ.get("RRQ_FANOUT_ITEMS", "1000000"))
    took = await fan_out_with_a_worker(r, url, items, limit=3600, bound_us=SLOW_US)
    print(f"fan-out of {items:,} items: {took:.1f}s")


@pytest.mark.timeout(600)
@pytest.mark.slow  # two worker processes and 20,000 children: about 40 s on a loaded machine
def test_sigkill_between_chunks_then_another_worker_finishes(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    """A worker killed (SIGKILL) while it expands a fan-out: the next worker takes the parent
    over and every child exists exactly once."""
    n = 20_000
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 5s}}
defaults: {{lock_extension: 1s}}
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s}}
queues:
  split: {{handler: 'tests.stage_handlers:numbers', next: each, fan_out: true}}
  each: {{handler: 'tests.stage_handlers:double'}}
"""
    )
    layout = KeyLayout("t")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rrq_flow", "run", str(path), "--queue", "split"]
    with load(path).sync_client() as client:
        parent = client.enqueue("split", n)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            rec = sync_redis.hmget(layout.job(parent), ["status", "children"])
            if rec[0] == "expanding" and int(rec[1] or 0) > 0:
                break
            assert rec[0] != "done", "finished before the kill: make n larger"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    created = int(sync_redis.hget(layout.job(parent), "children") or 0)
    assert 0 < created < n
    out = subprocess.run(
        [*cmd, "--burst"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert "continuing the fan-out" in out.stderr
    assert sync_redis.hget(layout.job(parent), "status") == "done"
    ids = sync_redis.lrange(layout.job_children(parent), 0, -1)
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {f"{parent}:each:{i}" for i in range(n)}
    assert sync_redis.zcard(layout.queue("each").ready) == n
    assert int(sync_redis.hget(layout.queue("each").stats, "enqueued")) == n

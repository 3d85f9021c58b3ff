"""Many hosts: Redis and two worker "hosts" in their own network namespaces.

A bridge in Redis' namespace joins two veth pairs, one per host namespace; every address
(10.231.0.0/24) exists only inside those namespaces. Redis also listens on a unix socket, which
is how the test's producer and checker (in the root namespace) reach it: unix sockets are not
network-namespaced. Host A is cut off from Redis (its link down) for 3 x ``lock_extension``
mid-run: host B recovers A's jobs, A's late outcomes are fenced, and the fault checker finds
0 lost and 0 duplicated terminal states.

Needs root (``ip netns``); skipped with the reason otherwise. Run with ``pytest -m netns``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rrq_flow.redis_server import find_redis_server, free_port
from tests.faults.harness import (
    Fault,
    FaultRun,
    Proc,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    pipeline_yaml,
    read_histories,
    scenario_timeout,
)
from tests.scale.scenario import finish
from tests.scale.topology import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.timeout(scenario_timeout(240))]

SUBNET = "10.231.0"
REDIS_ADDR = f"{SUBNET}.1"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class Hosts:
    """Three namespaces: ``r`` (Redis, with the bridge) and hosts ``a`` and ``b``."""

    def __init__(self) -> None:
        tag = f"rq{os.getpid() % 100000}"
        self.ns = {h: f"{tag}{h}" for h in ("r", "a", "b")}
        self.veth = {h: (f"{tag}{h}0", f"{tag}{h}1") for h in ("a", "b")}
        self.made: list[str] = []

    def up(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        r = self.ns["r"]
        sh("ip", "-n", r, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", f"{REDIS_ADDR}/24", "dev", "br0")
        sh("ip", "-n", r, "link", "set", "br0", "up")
        for i, host in enumerate(("a", "b"), start=2):
            outer, inner = self.veth[host]
            ns = self.ns[host]
            sh("ip", "link", "add", outer, "netns", r, "type", "veth", "peer", inner, "netns", ns)
            sh("ip", "-n", r, "link", "set", outer, "master", "br0")
            sh("ip", "-n", r, "link", "set", outer, "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")

    def link(self, host: str, state: str) -> None:
        """The host's side of its link ``up`` or ``down`` (a cut-off host)."""
        sh("ip", "-n", self.ns[host], "link", "set", self.veth[host][1], state)

    def down(self) -> None:
        for ns in reversed(self.made):
            with contextlib.suppress(subprocess.SubprocessError):
                sh("ip", "netns", "del", ns)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    h = Hosts()
    try:
        h.up()
    except (subprocess.SubprocessError, OSError) as exc:
        h.down()
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"network namespaces not permitted here: {exc} {detail!r}")
    try:
        yield h
    finally:
        h.down()


class NetnsRedis:
    """redis-server inside namespace ``r``: TCP on the bridge for the hosts, a unix socket for
    the test itself."""

    def __init__(self, hosts: Hosts, procs: Processes, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.sock = base / "r.sock"
        self.url = f"unix://{self.sock}"  # the test's (producer, checker)
        self.tcp_url = f"redis://{REDIS_ADDR}:{self.port}/0"  # the hosts'
        cmd = ["ip", "netns", "exec", hosts.ns["r"], find_redis_server()]
        cmd += ["--port", str(self.port), "--bind", REDIS_ADDR, "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(base), "--unixsocket", str(self.sock)]
        cmd += ["--unixsocketperm", "700", "--logfile", str(base / "redis.log")]
        cmd += ["--protected-mode", "no"]  # reachable only inside the test's namespaces
        self.proc = procs.spawn("redis", cmd, base, dict(os.environ))
        wait_for(lambda: self.client().ping(), 20, "redis-server in its namespace")

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.sock), decode_responses=True, socket_timeout=5, **kw
        )


def start_host_worker(run: FaultRun, hosts: Hosts, host: str, pipeline: Path) -> Proc:
    cmd = ["ip", "netns", "exec", hosts.ns[host], sys.executable, "-m", "rrq_flow"]
    proc = run.procs.spawn(f"host-{host}", [*cmd, "run", str(pipeline)], run.logs, run.env())
    run.workers.append(proc)
    return proc


def test_a_host_cut_off_from_redis(
    hosts: Hosts, seed: int, procs: Processes, fault_dir: Path
) -> None:
    s = Settings(lock_extension=1.0)
    node = NetnsRedis(hosts, procs, fault_dir / "redis")
    run = FaultRun("netns-cut", fault_dir, procs, seed, s, appendonly=False, redis_node=node)
    # The hosts reach Redis over the namespaces' network only.
    hosts_pipeline = fault_dir / "hosts.yaml"
    hosts_pipeline.write_text(pipeline_yaml(node.tcp_url, s, persistence="none"))
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency, 8.0))
    a = start_host_worker(run, hosts, "a", hosts_pipeline)
    b = start_host_worker(run, hosts, "b", hosts_pipeline)
    for w in (a, b):
        run.wait_started(w)
    run.produce(jobs, spread=10.0)

    assert run.wait_in_flight(a.pid, timeout=20), "host a never ran a job"
    t0 = time.time()
    hosts.link("a", "down")
    in_flight = run.in_flight(a.pid)
    cut = 3 * s.lock_extension
    time.sleep(cut)
    hosts.link("a", "up")
    t1 = time.time()
    run.faults.append(Fault("netns-cut", t0, t1, a.pid, {"seconds": cut}))

    # Host b picks up what host a was running, within lock_extension + the reap interval (a
    # generous bound on top: the machine is shared).
    bound = s.lock_extension + s.reap_interval + 10.0

    def recovered() -> bool:
        starts = {
            e["id"]
            for e in read_histories(run.history)
            if e["ev"] == "start" and e["pid"] == b.pid and e["t"] > t0
        }
        missing = set(in_flight) - starts - finished_before(run, in_flight, t0)
        return not missing

    wait_for(recovered, bound + cut, "host b recovered host a's jobs", interval=0.5)
    rep = finish(run, [a, b], cut_seconds=cut, recovered_jobs=len(in_flight))
    rep.assert_ok()
    assert "another worker owns it now (fenced)" in a.stderr() or not any(
        e["ev"] == "end" and e["pid"] == a.pid and e["id"] in in_flight and e["t"] > t0
        for e in read_histories(run.history)
    ), "host a finished a reaped job late and its outcome was not fenced"


def finished_before(run: FaultRun, ids: dict[str, Any], t: float) -> set[str]:
    """Jobs among ``ids`` whose outcome host a had already sent before the cut (nothing to
    recover)."""
    return {
        e["id"]
        for e in read_histories(run.history)
        if e["ev"] in ("end", "fail") and e["id"] in ids and e["t"] <= t
    }

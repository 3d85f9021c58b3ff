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

from rrq_flow.redis_server import free_port
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
            ["redis-server", str(conf), "--sentinel"],
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

    def __init__(self, base: Path, *, down_after_ms: int = 1000, min_replicas: int = 0):
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
            wait_for(self._sentinels_agree, 30, "sentinels see the replica and each other")
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

        return int(wait_for(switched, timeout, "sentinel failover"))

    def close(self) -> None:
        for s in self.sentinels:
            s.kill()
        self.procs.cleanup()


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
        import shutil

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

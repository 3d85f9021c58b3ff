"""``rrq-flow failover``'s refusals, without a Sentinel topology (the failover itself is
tests/scale/test_sentinel.py::test_rrq_flow_failover_loses_nothing_without_durability)."""

from __future__ import annotations

from pathlib import Path

from rrq_flow.redis_server import free_port
from tests.scale.scenario import cli


def _pipeline(tmp_path: Path, redis: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"version: 1\npipeline: fo\nredis: {{{redis}}}\n"
        "queues:\n  q: {handler: 'tests.handlers:echo'}\n"
    )
    return path


def test_a_pipeline_without_sentinel_is_a_usage_error(tmp_path: Path) -> None:
    done = cli("failover", str(_pipeline(tmp_path, "url: 'redis://127.0.0.1:1/0'")))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"rrq-flow: {tmp_path / 'p.yaml'}: rrq-flow failover needs redis.sentinel "
        "(a Sentinel master)"
    ]


def test_unreachable_sentinels_are_one_clear_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    redis = f'connect_timeout: 1s, sentinel: {{master: mm, nodes: ["127.0.0.1:{port}"]}}'
    path = _pipeline(tmp_path, redis)
    done = cli("failover", str(path))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "rrq-flow: cannot reach Redis at redis://mm/0: No master found for 'mm': "
        "no sentinel answered, or none knows that master"
    ]

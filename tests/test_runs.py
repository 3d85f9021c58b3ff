"""Batch runs: run ids through enqueue and descendants, ``runs`` / ``results``, ``wait_run``,
``wait(descendants=True)`` and the expiry of run records — against real Redis and a real worker."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
import trio

from rrq_flow.cli import main
from rrq_flow.client._core import JobSpec
from rrq_flow.client.jsonl import check_line
from rrq_flow.errors import RunNotFound
from tests.conftest import make_pipeline, make_queue, run_burst

S = "tests.stage_handlers"


def _pipeline(redis_url: str, **kw: Any) -> Any:
    return make_pipeline(
        redis_url,
        make_queue("gen", f"{S}:numbers", next=("double",), fan_out=True, **kw),
        make_queue("double", f"{S}:double", next=("plus",), **kw),
        make_queue("plus", f"{S}:plus_one", **kw),
        name="runs",
    )


def test_a_run_id_reaches_every_descendant_and_results_stream_in_order(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = _pipeline(redis_url, result_ttl=120.0)
    with cfg.sync_client() as client:
        root = client.enqueue("gen", 5, run="r1")
        other = client.enqueue("gen", 2)  # no run: not counted in r1
        assert client.run("r1").total == 1
        trio.run(run_burst, cfg)
        info = client.wait_run("r1", timeout=30)
        assert info.complete and info.total == 11
        assert info.queues["plus"]["done"] == 5 and info.counts()["pending"] == 0
        assert client.job(root).run == "r1"
        assert client.job(f"{root}:double:3:plus:0").run == "r1"
        assert client.job(other).run is None
        results = list(client.results("r1"))  # default: the final stage "plus"
        # Creation order: a later stage's jobs appear in the order their parents completed.
        assert sorted(r["result"] for r in results) == [1, 3, 5, 7, 9]
        assert {r["queue"] for r in results} == {"plus"}
        doubles = [r["result"] for r in client.results("r1", "double")]
        assert doubles == [0, 2, 4, 6, 8]
        assert [r.id for r in client.runs()] == ["r1"]
        counts = client.wait(root, timeout=30, descendants=True)
        assert counts == {"done": 11}
        # Finished: every key of the run expires after result_ttl, none before.
        prefix = "rrq:{runs}:run:r1"
        for key in (prefix, prefix + ":jobs:gen", prefix + ":jobs:double", prefix + ":jobs:plus"):
            assert 0 < sync_redis.pttl(key) <= 120_000, key
        with pytest.raises(RunNotFound):
            client.run("nope")


def test_an_unfinished_run_has_no_ttl_and_counts_dead_jobs(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("a", "tests.handlers:always_fail", retry={"max_attempts": 1}),
        make_queue("b", "tests.handlers:echo"),
        name="runs",
    )
    with cfg.sync_client() as client:
        client.enqueue_many("a", [[], []], run="r2")
        client.enqueue("b", 1, run="r2", defer=3600)  # stays unfinished
        trio.run(run_burst, cfg)
        info = client.run("r2")
        assert not info.complete and info.queues["a"]["dead"] == 2
        assert sync_redis.pttl("rrq:{runs}:run:r2") == -1
        with pytest.raises(TimeoutError):
            client.wait_run("r2", timeout=0.3)
        dead = [r for r in client.results("r2", "a")]
        assert [d["status"] for d in dead] == ["dead", "dead"]
        assert dead[0]["error"]["message"] == "bad input"


def test_wait_run_returns_when_the_last_job_ends(redis_url: str) -> None:
    cfg = _pipeline(redis_url)
    with cfg.sync_client() as client:
        client.enqueue("gen", 3, run="r3")
        seen: dict[str, Any] = {}

        def waiter() -> None:
            seen["info"] = client.wait_run("r3", timeout=60)

        thread = threading.Thread(target=waiter)
        thread.start()
        trio.run(run_burst, cfg)
        thread.join(60)
        assert seen["info"].complete and seen["info"].total == 7


def test_async_client_wait_run_and_descendants(redis_url: str) -> None:
    cfg = _pipeline(redis_url)

    async def main_() -> tuple[Any, Any]:
        async with cfg.client() as client:
            root = await client.enqueue("gen", 2, run="r4")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_burst, cfg)
                info = await client.wait_run("r4", timeout=60)
                counts = await client.wait(root, timeout=60, descendants=True)
            return info, counts

    info, counts = trio.run(main_)
    assert info.total == 5 and counts == {"done": 5}


def test_jsonl_lines_may_name_their_run() -> None:
    named, unnamed = (check_line(line) for line in ('{"args": [1], "run": "x.1"}', "[2]"))
    assert isinstance(named, JobSpec) and isinstance(unnamed, JobSpec)
    assert named.run == "x.1" and unnamed.run is None
    bad = check_line('{"args": [1], "run": "bad run"}')
    assert isinstance(bad, str) and "run id" in bad


def test_cli_run_input_generates_a_run_and_results_prints_it(
    redis_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"version: 1\npipeline: clirun\nredis: {{url: '{redis_url}'}}\nqueues:\n"
        f"  gen: {{handler: '{S}:numbers', next: double, fan_out: true}}\n"
        f"  double: {{handler: '{S}:double'}}\n"
    )
    data = tmp_path / "in.jsonl"
    data.write_text("[3]\n")
    assert main(["run", str(pipeline), "--burst", "--input", f"gen={data}"]) == 0
    captured = capsys.readouterr()
    run_id = captured.err.split(", run ")[1].split()[0]
    assert f"--run {run_id}" in captured.out
    assert main(["results", str(pipeline), "--run", run_id]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["result"] for x in lines] == [0, 2, 4]
    assert main(["results", str(pipeline), "--run", run_id, "--format", "json"]) == 0
    assert [x["result"] for x in json.loads(capsys.readouterr().out)] == [0, 2, 4]
    assert main(["runs", str(pipeline), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert runs[0]["id"] == run_id and runs[0]["counts"]["done"] == 4
    assert main(["runs", str(pipeline)]) == 0
    assert f"run {run_id}" in capsys.readouterr().out
    assert main(["results", str(pipeline), "--run", "missing"]) == 1
    assert "no run 'missing'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["enqueue", str(pipeline), "gen", "--args", "[1]", "--run", "a b"])
    assert exit_info.value.code == 2

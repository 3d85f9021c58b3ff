"""Every example of docs/handlers.md runs: its handler module and pipeline file are written out as
the page shows them, and each ``<!-- check: FILE.yaml QUEUE ARGS KWARGS => QUEUE EXPECT -->``
comment enqueues a job, runs a real worker in burst mode against real Redis, and compares the
result of the run's job in the target queue (EXPECT is its JSON result, or the word ``dead``)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import rrq_flow
from rrq_flow.config.model import RedisSettings
from tests.conftest import TESTS, run_burst

DOC = TESTS.parent / "docs" / "handlers.md"
BLOCK = re.compile(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", re.S)
CHECK = re.compile(r"<!-- check: (\S+) (\S+) (\[.*?\]) (\{.*?\}) => (\S+) (.+?) -->")


def _checks() -> list[tuple[str, ...]]:
    return [m.groups() for m in CHECK.finditer(DOC.read_text(encoding="utf-8"))]


def test_every_example_has_a_check() -> None:
    text = DOC.read_text(encoding="utf-8")
    files = [name for name, _ in BLOCK.findall(text)]
    checked = {c[0] for c in _checks()}
    assert {f for f in files if f.endswith(".yaml")} == checked
    assert len(_checks()) >= 10


@pytest.fixture(scope="module")
def snippets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("handlers-doc")
    for name, body in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        (folder / name).write_text(f"# {name}\n{body}", encoding="utf-8")
    sys.path.insert(0, str(folder))
    return folder


@pytest.mark.parametrize("check", _checks(), ids=lambda c: f"{c[0]}:{c[2]}")
def test_example_runs(check: tuple[str, ...], snippets: Path, redis_url: str) -> None:
    pipeline, queue, args, kwargs, target, expect = check
    config = rrq_flow.load(snippets / pipeline, check_imports=True)
    config = dataclasses.replace(config, redis=RedisSettings(url=redis_url))
    with config.sync_client() as client:
        client.enqueue(queue, *json.loads(args), run="doc", **json.loads(kwargs))
        trio.run(run_burst, config)
        assert client.wait_run("doc", timeout=60).complete
        [line] = list(client.results("doc", target))
    if expect == "dead":
        assert line["status"] == "dead", line
    else:
        assert line["status"] == "done", line
        expected: Any = json.loads(expect)
        assert line["result"] == expected

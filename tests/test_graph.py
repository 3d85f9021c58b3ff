"""``rrq-flow graph`` for the examples, ``validate``'s text form and its join reachability check,
and the quickstart's report as a join (running it twice writes the same report)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rrq_flow.cli import main
from rrq_flow.config import load
from rrq_flow.config.graph import render
from tests.conftest import TESTS

EXAMPLES = TESTS.parent / "examples"


def test_graph_of_the_wordcount_example(capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = str(EXAMPLES / "wordcount" / "pipeline.yaml")
    assert main(["graph", pipeline]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pipeline 'wordcount': 3 stage(s)",
        "  files  [auto, concurrency 10]  -> count (fan-out)",
        "  count  [process, concurrency 4]  -> total (join)",
        "  total  [auto, concurrency 10, join, on failure: run]  -> (end)",
    ]
    assert main(["graph", pipeline, "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR\n")
    assert "q_files_5 ==> q_count_5" in mermaid and "q_count_5 -- join --> q_total_5" in mermaid
    assert 'q_total_5(["total<br/>auto, concurrency 10, join, on failure: run"])' in mermaid
    assert main(["graph", pipeline, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "wordcount" {')
    assert '"files" -> "count" [label="fan-out", style=bold];' in dot
    assert '"count" -> "total" [label="join"];' in dot


@pytest.mark.parametrize("example", ["quickstart", "log_report", "wordcount"])
def test_every_example_draws_in_every_format(example: str) -> None:
    config = load(EXAMPLES / example / "pipeline.yaml")
    for fmt in ("text", "mermaid", "dot"):
        out = render(config, fmt)
        assert all(name in out for name in config.queues)


def test_validate_prints_the_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--no-imports", str(EXAMPLES / "quickstart" / "pipeline.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  analyze  [auto, concurrency 20]  -> report (join)" in out


def test_validate_reports_a_join_no_fan_out_reaches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(
        "version: 1\npipeline: j\nqueues:\n"
        "  a: {handler: 'x:y', next: b}\n"
        "  b:\n    handler: 'x:y'\n    join: true\n"
    )
    assert main(["validate", "--no-imports", str(p)]) == 1
    out = capsys.readouterr().out
    assert f"{p}:7:11: queues.b.join: join queue 'b' cannot be reached from a fan_out queue" in out


def test_the_quickstart_report_is_a_join_and_the_same_twice(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", folder, ignore=shutil.ignore_patterns("out", ".*"))
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text() + f"redis: {{url: '{redis_url}'}}\n")
    reports = []
    for _ in range(2):
        args = ["run", str(pipeline), "--burst", "--input", f"split={folder / 'input.jsonl'}"]
        assert main(args) == 0
        reports.append((folder / "out" / "report.md").read_text())
    assert reports[0] == reports[1]
    lines = reports[0].splitlines()
    assert lines[0] == "| document | paragraph | words | top words |" and len(lines) == 11
    assert "report" in capsys.readouterr().out

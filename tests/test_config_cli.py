"""``rrq-flow validate`` and ``rrq-flow schema``: output, exit codes, --json, --no-imports."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrq_flow.cli import main
from rrq_flow.config.schema import load_schema

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "config"
LOCATED = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): ")


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def test_example_is_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["validate", "pipeline.yaml.example"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        "pipeline.yaml.example: ok — pipeline 'thumbnails', 2 queues (fetch -> resize), "
        "1 worker process\n"
        "pipeline 'thumbnails': 2 stage(s)\n"
        "  fetch   [auto, concurrency 20]  -> resize\n"
        "  resize  [process, concurrency 2]  -> (end)\n"
    )
    assert err == ""


def test_summary_of_a_branching_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "good.yaml"
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"{path}: ok — pipeline 'cfg-good', 3 queues (fetch -> [resize, archive]), "
        "3 worker processes",
        "pipeline 'cfg-good': 3 stage(s)",
        "  fetch    [auto, concurrency 20]  -> resize (fan-out), archive (fan-out)",
    ]


def test_five_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "five_mistakes.yaml"
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    located = [line for line in lines if LOCATED.match(line)]
    assert len(located) == 5
    assert all(LOCATED.match(line)["file"] == str(path) for line in located)  # type: ignore[index]
    assert lines == [
        f"{path}:2:11: pipeline: must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, got 'My Pipe'",
        f"{path}:6:5: queues.fetch.timout: unknown key; did you mean 'timeout'?",
        f"{path}:7:18: queues.fetch.concurrency: must be an integer >= 1, got 'ten'",
        f"{path}:8:11: queues.fetch.next: unknown queue 'resiz'; did you mean 'resize'?",
        f"{path}:11:14: queues.resize.timeout: must be a duration such as 30s, 1h30m or 250ms "
        "(units ms, s, m, h, d; a number is seconds), got '5 minutes'",
        "5 problems",
    ]
    assert err == ""


def test_one_problem_is_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\npipeline: p\nqueues: {a: {handler: 'm:f', next: b}}\n")
    assert main(["validate", "--no-imports", str(path)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "1 problem"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"rrq-flow: {path}: no such file\n"


def test_syntax_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "syntax_error.yaml"
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"rrq-flow: {path}:5:1: (root): not valid YAML: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "1:1: (root): the file is empty; a pipeline needs at least 'version', 'pipeline' "
            "and 'queues'",
        ),
        (
            "- 1\n",
            "1:1: (root): the top level must be a mapping of settings "
            "(version, pipeline, queues, ...), got a list",
        ),
    ],
)
def test_unusable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"rrq-flow: {path}:{message}\n"


def test_json_valid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["validate", "--json", "pipeline.yaml.example"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "file": "pipeline.yaml.example",
        "valid": True,
        "problems": [],
        "summary": {
            "problems": 0,
            "pipeline": "thumbnails",
            "queues": ["fetch", "resize"],
            "flow": "fetch -> resize",
            "worker_processes": 1,
            "imports_checked": True,
        },
    }


def test_json_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "five_mistakes.yaml"
    assert main(["validate", "--json", str(path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["file"] == str(path)
    assert data["valid"] is False
    assert data["summary"] == {"problems": 5}
    assert data["problems"][1] == {
        "file": str(path),
        "line": 6,
        "col": 5,
        "path": "queues.fetch.timout",
        "message": "unknown key; did you mean 'timeout'?",
    }


def test_json_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert main(["validate", "--json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "file": str(path),
        "valid": False,
        "error": f"{path}: no such file",
        "exit_code": 2,
        "problems": [],
        "summary": None,
    }
    assert err == ""


def test_no_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\npipeline: p\nqueues: {a: {handler: 'cfgfix_absent:run'}}\n")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out == f"{path}:3:23: queues.a.handler: no module named 'cfgfix_absent'\n1 problem\n"
    assert main(["validate", "--no-imports", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}: ok — pipeline 'p', 1 queue (a), 1 worker process (imports not checked)"
    )


def test_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == load_schema()
    assert out == (ROOT / "schemas" / "pipeline.schema.json").read_text()


def test_validate_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--no-imports" in out

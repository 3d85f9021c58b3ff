"""Reading pipeline files: node positions, duplicate keys, merges, and unusable files."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from rrq_flow.config import load, validate_file
from rrq_flow.config.loader import dotted, parse_text, read_document
from rrq_flow.errors import ConfigUsageError


def _write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text))
    return path


def _lines(path: Path) -> list[str]:
    """Problems without the file name: ``LINE:COL: path: message``."""
    return [str(p).removeprefix(f"{path}:") for p in validate_file(path, check_imports=False)]


def test_dotted_paths() -> None:
    assert dotted(()) == "(root)"
    assert dotted(("queues", "fetch", "next", 0)) == "queues.fetch.next[0]"
    assert dotted(("defaults", "retry", "fatal_errors", 2)) == "defaults.retry.fatal_errors[2]"


def test_positions_are_one_based_and_point_at_values_and_keys() -> None:
    doc = parse_text("version: 1\nqueues:\n  fetch:\n    next: [a, b]\n", "f.yaml")
    assert doc.locations.position(("version",)) == (1, 10)
    assert doc.locations.position(("version",), at_key=True) == (1, 1)
    assert doc.locations.position(("queues", "fetch"), at_key=True) == (3, 3)
    assert doc.locations.position(("queues", "fetch", "next", 1)) == (4, 15)
    # Unknown paths fall back to the nearest located ancestor.
    assert doc.locations.position(("queues", "fetch", "nope", "deeper")) == (4, 5)


def test_duplicate_key_is_reported_at_the_second_occurrence(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        queues:
          a:
            handler: m:f
            timeout: 5s
            timeout: 10s
        """,
    )
    assert _lines(path) == ["7:5: queues.a.timeout: duplicate key 'timeout' (first at line 6)"]


def test_duplicate_queue_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        queues:
          a: {handler: "m:f"}
          b: {handler: "m:g"}
          a: {handler: "m:h"}
        """,
    )
    assert _lines(path) == ["6:3: queues.a: duplicate key 'a' (first at line 4)"]


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        x-slow: &slow {timeout: 1h, concurrency: 1}
        queues:
          render: {<<: *slow, handler: "m:f", concurrency: 2}
          other:
            <<: [*slow, {dead_letter: false}]
            handler: m:g
        """,
    )
    config = load(path)
    assert config.queues["render"].timeout == 3600.0
    assert config.queues["render"].concurrency == 2  # explicit keys win over merged ones
    assert config.queues["other"].concurrency == 1
    assert config.queues["other"].dead_letter is False


def test_merged_values_are_located_at_the_anchor(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        version: 1
        pipeline: p
        x-base: &base {timeout: soon}
        queues:
          a: {<<: *base, handler: "m:f"}
        """,
    )
    assert _lines(path) == [
        "3:25: queues.a.timeout: must be a duration such as 30s, 1h30m or 250ms "
        "(units ms, s, m, h, d; a number is seconds), got 'soon'"
    ]


def test_bad_merge_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\npipeline: p\nqueues:\n  a: {<<: 5, handler: 'm:f'}\n")
    assert _lines(path) == ["4:11: queues.a.<<: '<<' needs a mapping or a list of mappings"]


def test_recursive_alias(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "version: 1\npipeline: p\nx-loop: &l [*l]\nqueues: {a: {handler: 'm:f'}}\n"
    )
    assert _lines(path) == ["3:9: x-loop[0]: recursive YAML alias (an anchor used inside itself)"]


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object/apply:os.system [echo hi]", "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!custom 1", "!custom"),
        ("!!set {a}", "!!set"),
    ],
)
def test_only_safe_yaml(tmp_path: Path, value: str, tag: str) -> None:
    path = _write(
        tmp_path, f"version: 1\npipeline: p\nx-evil: {value}\nqueues: {{a: {{handler: 'm:f'}}}}\n"
    )
    assert _lines(path) == [
        f"3:9: x-evil: unsupported YAML tag {tag!r} (only plain YAML is allowed)"
    ]


def test_non_string_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\npipeline: p\nqueues: {a: {handler: 'm:f', [1]: 2}}\n")
    assert _lines(path) == ["3:30: queues.a.?: mapping keys must be plain strings"]


# --- files that cannot be used at all (usage errors) ----------------------------------------


def _usage_error(path: Path) -> str:
    with pytest.raises(ConfigUsageError) as info:
        read_document(path)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _usage_error(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    assert _usage_error(tmp_path) == f"{tmp_path}: is a directory, not a pipeline file"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert _usage_error(path) == (
        f"{path}:1:1: (root): the file is empty; a pipeline needs at least 'version', "
        "'pipeline' and 'queues'"
    )


def test_syntax_error_has_a_position() -> None:
    path = Path(__file__).parent / "fixtures" / "config" / "syntax_error.yaml"
    assert _usage_error(path) == (
        f"{path}:5:1: (root): not valid YAML: expected ',' or '}}', but got '<stream end>' "
        "(while parsing a flow mapping at line 4)"
    )


def test_bad_indentation(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n  pipeline: p\n")
    assert _usage_error(path) == (
        f"{path}:2:11: (root): not valid YAML: mapping values are not allowed here"
    )


def test_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n---\nversion: 1\n")
    assert _usage_error(path) == (
        f"{path}:2:1: (root): not valid YAML: but found another document "
        "(expected a single document in the stream at line 1)"
    )


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert _usage_error(path) == (
        f"{path}:1:1: (root): the top level must be a mapping of settings "
        f"(version, pipeline, queues, ...), got {got}"
    )


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n\xff\xfe\x00")
    assert _usage_error(path) == (
        f"{path}:2:1: (root): not a UTF-8 text file (undecodable byte at offset 11)"
    )


def test_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\x00\n")
    message = _usage_error(path)
    assert message.startswith(f"{path}:1:11: (root): not valid YAML: unacceptable character #x0000")
    assert "\n" not in message


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes("\ufeffversion: 1\npipeline: p\nqueues: {a: {handler: 'm:f'}}\n".encode())
    assert load(path).pipeline == "p"


def test_load_reports_usage_errors_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigUsageError):
        load(tmp_path / "missing.yaml")

"""Read a pipeline file into plain Python data plus the YAML position of every node.

Only safe YAML is accepted. The file is *composed* into PyYAML nodes (which carry marks) and
the nodes are turned into dicts, lists and scalars here, so that every later check can point at
``FILE:LINE:COL`` of the offending node. Duplicate keys are reported (PyYAML keeps the last one
silently), ``<<`` merge keys work as in PyYAML, and ``${VAR}`` references in string values are
substituted from the environment (see :mod:`rrq_flow.config.envsubst`).

Aliases are expanded here, so a few hundred bytes of nested aliases ("billion laughs") could
stand for billions of nodes: building stops, with the position of the alias that crossed it,
once :data:`MAX_EXPANDED_NODES` nodes (values and merged keys) have been built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rrq_flow.config.envsubst import has_references, substitute
from rrq_flow.errors import ConfigUsageError, Problem

PathKey = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column; (0, 0) when unknown (built in code)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_YAML_TAGS = "tag:yaml.org,2002:"
_COLLECTION_TAGS = {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
# Values plus merged-in keys a pipeline file may expand to. A large real pipeline is a few
# thousand; this refuses an alias bomb after a fraction of a second and a few MB.
MAX_EXPANDED_NODES = 100_000
# Collections inside collections, counted through aliases too; settings need fewer than ten.
MAX_NESTING = 64
ROOT = "(root)"  # the path shown for a problem with the whole document


def dotted(path: PathKey) -> str:
    """``("queues", "fetch", "next", 0)`` -> ``"queues.fetch.next[0]"``; ``()`` -> ``(root)``."""
    if not path:
        return ROOT
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(slots=True)
class Locations:
    """Where each value (and each mapping key) sits in the file."""

    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)

    def position(self, path: PathKey, *, at_key: bool = False) -> Position:
        """The node at ``path`` (its key if ``at_key``), else its nearest located ancestor."""
        if at_key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (0, 0))


@dataclass(slots=True)
class Document:
    """A pipeline file's data, where its nodes are, and what was wrong while reading it."""

    file: str
    data: Any
    locations: Locations = field(default_factory=Locations)
    problems: list[Problem] = field(default_factory=list)
    # Paths already reported while reading (e.g. an unset variable): later checks skip them.
    blocked: set[PathKey] = field(default_factory=set)

    def problem(self, path: PathKey, message: str, *, at_key: bool = False) -> Problem:
        line, col = self.locations.position(path, at_key=at_key)
        return Problem(self.file, line, col, dotted(path), message)

    def is_blocked(self, path: PathKey) -> bool:
        return any(path[:n] in self.blocked for n in range(len(path) + 1))


class MarkLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes (with marks) and to construct scalars.

    Nesting is limited while composing, before Python's recursion limit could be hit.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(
                    problem=f"nested deeper than {MAX_NESTING} levels", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooBig(Exception):
    """Building stopped at ``node`` (reached through ``path``): too many nodes, or too deep."""

    def __init__(self, node: yaml.Node, path: PathKey, message: str):
        super().__init__(message)
        self.node = node
        self.path = path
        self.message = message


class _TooDeep(yaml.MarkedYAMLError):
    """The file nests collections deeper than MAX_NESTING (PyYAML's composer is recursive)."""


def _position(node: yaml.Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


class _Builder:
    """Turns composed nodes into data, filling :class:`Locations` and collecting problems."""

    def __init__(self, loader: MarkLoader, doc: Document, environ: Mapping[str, str] | None):
        self.loader = loader
        self.doc = doc
        self.environ = environ
        self._active: set[int] = set()  # nodes being built: guards against recursive aliases
        self._budget = MAX_EXPANDED_NODES
        self._built: set[int] = set()  # collection nodes built once: building again = an alias
        self._alias_path: PathKey | None = None  # the outermost alias being expanded

    def _spend(self, node: yaml.Node, path: PathKey) -> None:
        self._budget -= 1
        if self._budget < 0:
            message = (
                f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} nodes "
                "(an alias bomb?); write the settings out instead"
            )
            raise _TooBig(node, self._alias_path or path, message)
        if len(path) > MAX_NESTING:
            raise _TooBig(node, path, f"nested deeper than {MAX_NESTING} levels (through aliases)")

    def report(self, path: PathKey, message: str, *, at_key: bool = False) -> None:
        self.doc.problems.append(self.doc.problem(path, message, at_key=at_key))
        self.doc.blocked.add(path)

    def _bad_tag(self, node: yaml.Node, path: PathKey) -> None:
        tag = node.tag.replace(_YAML_TAGS, "!!", 1)
        self.report(path, f"unsupported YAML tag {tag!r} (only plain YAML is allowed)")

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self._spend(node, path)
        self.doc.locations.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if node.tag not in _COLLECTION_TAGS:
            self._bad_tag(node, path)
            return None
        if id(node) in self._active:
            self.report(path, "recursive YAML alias (an anchor used inside itself)")
            return None
        outermost = self._alias_path is None and id(node) in self._built
        if outermost:
            self._alias_path = path
        self._built.add(id(node))
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, path)
        finally:
            self._active.discard(id(node))
            if outermost:
                self._alias_path = None

    def _scalar(self, node: yaml.ScalarNode, path: PathKey) -> Any:
        try:
            value = self.loader.construct_object(node)
        except yaml.YAMLError:
            self._bad_tag(node, path)
            return node.value
        if not isinstance(value, str) or not has_references(value):
            return value
        result = substitute(value, self.environ)
        for message in result.errors:
            self.report(path, message)
        if result.errors:
            return value
        if node.style is None:
            # A plain (unquoted) scalar reads as if the substituted text had been written there,
            # so `processes: ${WORKERS:-2}` is an int and `url: ${REDIS_URL:-}` is null.
            return self._plain(result.value)
        return result.value

    def _plain(self, text: str) -> Any:
        tag: str = self.loader.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, text, (True, False)
        )
        try:
            return self.loader.construct_object(yaml.ScalarNode(tag, text))
        except (yaml.YAMLError, ValueError):
            return text

    def _entries(
        self, node: yaml.MappingNode, path: PathKey, *, explicit: bool
    ) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) in order, with ``<<`` merges after the explicit keys."""
        seen: dict[str, yaml.Node] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            self._spend(key_node, path)  # merges repeat keys without building them
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                if explicit:
                    self.doc.locations.values[(*path, "?")] = _position(key_node)
                    self.report((*path, "?"), "mapping keys must be plain strings")
                continue
            key = key_node.value
            if key in seen:
                if explicit:
                    first = _position(seen[key])[0]
                    line, col = _position(key_node)
                    message = f"duplicate key {key!r} (first at line {first})"
                    self.doc.problems.append(
                        Problem(self.doc.file, line, col, dotted((*path, key)), message)
                    )
                continue
            seen[key] = key_node
            yield key, key_node, value_node
        for merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.doc.locations.values[(*path, "<<")] = _position(merge)
                    self.report((*path, "<<"), "'<<' needs a mapping or a list of mappings")
                    continue
                for key, key_node, value_node in self._entries(source, path, explicit=False):
                    if key not in seen:
                        seen[key] = key_node
                        yield key, key_node, value_node

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, key_node, value_node in list(self._entries(node, path, explicit=True)):
            self.doc.locations.keys[(*path, key)] = _position(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result


def _syntax_error(label: str, exc: yaml.YAMLError, text: str = "") -> ConfigUsageError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        if isinstance(exc, _TooDeep):
            return ConfigUsageError(
                f"{label}:{mark.line + 1}:{mark.column + 1}: {ROOT}: {exc.problem}"
            )
        message = exc.problem or "syntax error"
        if exc.context:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            message += f" ({exc.context}{where})"
        return ConfigUsageError(
            f"{label}:{mark.line + 1}:{mark.column + 1}: {ROOT}: not valid YAML: {message}"
        )
    line, col = 1, 1
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    message = " ".join(str(exc).split())
    return ConfigUsageError(f"{label}:{line}:{col}: {ROOT}: not valid YAML: {message}")


def parse_text(text: str, label: str, *, environ: Mapping[str, str] | None = None) -> Document:
    """Parse ``text`` (the contents of ``label``); raise ConfigUsageError if it is no pipeline."""
    try:
        loader = MarkLoader(text)  # the reader rejects control characters right away
    except yaml.YAMLError as exc:
        raise _syntax_error(label, exc, text) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _syntax_error(label, exc, text) from None
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
            raise ConfigUsageError(
                f"{label}:1:1: {ROOT}: the file is empty; a pipeline needs at least "
                "'version', 'pipeline' and 'queues'"
            )
        if not isinstance(root, yaml.MappingNode):
            line, col = _position(root)
            got = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            raise ConfigUsageError(
                f"{label}:{line}:{col}: {ROOT}: the top level must be a mapping of settings "
                f"(version, pipeline, queues, ...), got {got}"
            )
        doc = Document(label, None)
        try:
            doc.data = _Builder(loader, doc, environ).build(root, ())
        except _TooBig as exc:
            # An alias has no node of its own: point at the collection it is written in.
            line, col = doc.locations.position(exc.path[:-1]) if exc.path else _position(exc.node)
            raise ConfigUsageError(
                f"{label}:{line}:{col}: {dotted(exc.path)}: {exc.message}"
            ) from None
        return doc
    finally:
        loader.dispose()


def read_document(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Document:
    """Read and parse a pipeline file; problems are located with ``path`` as given."""
    label = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigUsageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ConfigUsageError(f"{label}: is a directory, not a pipeline file") from None
    except OSError as exc:
        raise ConfigUsageError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigUsageError(
            f"{label}:{line}:{col}: {ROOT}: not a UTF-8 text file "
            f"(undecodable byte at offset {exc.start})"
        ) from None
    return parse_text(text, label, environ=environ)


def _plain_data(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_data(item) for item in value]
    return value


def document_from_dict(data: Mapping[str, Any], *, label: str = "<dict>") -> Document:
    """A document for data built in code: no positions (0:0), no ``${VAR}`` substitution."""
    if not isinstance(data, Mapping):
        raise ConfigUsageError(
            f"{label}: a pipeline must be a mapping of settings, got {_kind(data)}"
        )
    return Document(label, _plain_data(data))

"""Importing handlers and exception classes by reference, with one-line explanations."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrq_flow.config.imports import (
    ImportProblem,
    add_search_paths,
    import_exception_class,
    import_handler,
    import_object,
    is_async_callable,
    split_reference,
)

FIXTURES = Path(__file__).parent / "fixtures" / "config"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def _problem(call: object, spec: str, **kwargs: object) -> str:
    with pytest.raises(ImportProblem) as info:
        call(spec, search_paths=[FIXTURES], **kwargs)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("pkg.mod:func", ("pkg.mod", "func")),
        ("pkg.mod:Class.method", ("pkg.mod", "Class.method")),
        ("builtins.ValueError", ("builtins", "ValueError")),
        ("a.b.c", ("a.b", "c")),
    ],
)
def test_split_reference(spec: str, parts: tuple[str, str]) -> None:
    assert split_reference(spec) == parts


@pytest.mark.parametrize("spec", ["func", ":f", "m:", "m:1x", "a b:c", "m:f:g"])
def test_bad_references(spec: str) -> None:
    with pytest.raises(ImportProblem) as info:
        split_reference(spec)
    assert str(info.value) == (
        f"{spec!r} is not a valid reference; use 'package.module:name' "
        "(or a dotted name such as 'builtins.ValueError')"
    )


def test_import_object_forms() -> None:
    import os.path

    assert import_object("os.path:join") is os.path.join
    assert import_object("os.path.join") is os.path.join
    assert import_object("builtins.ValueError") is ValueError
    assert import_object("collections:OrderedDict.fromkeys") is not None


def test_search_paths_are_used() -> None:
    handler = import_handler("cfgfix_handlers:resize", search_paths=[FIXTURES])
    assert handler({"a": 1}) == {"a": 1}
    assert str(FIXTURES) in sys.path


def test_add_search_paths_keeps_order_and_does_not_repeat(tmp_path: Path) -> None:
    """At the end of sys.path, so they never shadow an installed package (docs/security.md)."""
    first, second = tmp_path / "a", tmp_path / "b"
    add_search_paths([first, second])
    add_search_paths([first, second])
    assert sys.path[-2:] == [str(first), str(second)]
    assert sys.path.count(str(first)) == 1


def test_missing_module() -> None:
    assert _problem(import_object, "cfgfix_nope:f") == "no module named 'cfgfix_nope'"


def test_missing_parent_package() -> None:
    assert _problem(import_object, "cfgfix_pkg.handlers:f") == (
        "cannot import 'cfgfix_pkg.handlers': no module named 'cfgfix_pkg'"
    )


def test_module_that_is_not_a_package() -> None:
    assert _problem(import_object, "cfgfix_handlers.sub:f") == (
        "no module named 'cfgfix_handlers.sub'"
    )


def test_missing_dependency_of_the_module() -> None:
    assert _problem(import_object, "cfgfix_needs_dep:run") == (
        "importing 'cfgfix_needs_dep' failed: "
        "ModuleNotFoundError: No module named 'cfgfix_not_installed_anywhere'"
    )


def test_module_raising_on_import_gives_one_line() -> None:
    assert _problem(import_object, "cfgfix_broken:run") == (
        "importing 'cfgfix_broken' failed: RuntimeError: database not configured"
    )


def test_missing_attribute_with_hint() -> None:
    assert _problem(import_object, "cfgfix_handlers:fetc") == (
        "module 'cfgfix_handlers' has no attribute 'fetc'; did you mean 'fetch'?"
    )
    assert _problem(import_object, "cfgfix_handlers:zzz") == (
        "module 'cfgfix_handlers' has no attribute 'zzz'"
    )
    assert _problem(import_object, "cfgfix_handlers:AsyncCallable.cal") == (
        "'cfgfix_handlers:AsyncCallable' has no attribute 'cal'"
    )


def test_handler_must_be_callable() -> None:
    assert _problem(import_handler, "cfgfix_handlers:NOT_CALLABLE") == (
        "'cfgfix_handlers:NOT_CALLABLE' is not callable (it is an int)"
    )


def test_exception_classes() -> None:
    assert import_exception_class("builtins.ValueError") is ValueError
    cls = import_exception_class("cfgfix_handlers:BadInput", search_paths=[FIXTURES])
    assert issubclass(cls, Exception)
    assert import_exception_class("builtins.KeyboardInterrupt") is KeyboardInterrupt
    assert _problem(import_exception_class, "cfgfix_handlers:NotAnError") == (
        "'cfgfix_handlers:NotAnError' is not an exception class (it is a class)"
    )
    assert _problem(import_exception_class, "builtins.len") == (
        "'builtins.len' is not an exception class (it is a builtin_function_or_method)"
    )


def test_is_async_callable() -> None:
    handlers = import_object("cfgfix_handlers:AsyncCallable", search_paths=[FIXTURES])
    assert is_async_callable(import_object("cfgfix_handlers:fetch"))
    assert is_async_callable(import_object("cfgfix_handlers:async_instance"))
    assert not is_async_callable(import_object("cfgfix_handlers:resize"))
    assert not is_async_callable(handlers)  # the class itself returns an instance
    assert not is_async_callable(len)

"""Import handlers and exception classes named in a pipeline file, explaining failures in a line.

A reference is ``"package.module:attr"`` (``attr`` may be dotted, ``Class.method``) or a plain
dotted name whose last part is the attribute (``"builtins.ValueError"``). The validator and the
worker both use these functions, so a handler that validates is the handler that runs.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class ImportProblem(Exception):
    """A reference could not be imported or is the wrong kind of object; one-line message."""


def _article(obj: object) -> str:
    name = "module" if isinstance(obj, type(sys)) else type(obj).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def split_reference(spec: str) -> tuple[str, str]:
    """``"pkg.mod:attr"`` or ``"pkg.mod.attr"`` -> ``("pkg.mod", "attr")``; ImportProblem if bad."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    parts = [*module.split("."), *attr.split(".")]
    if not module or not attr or not all(part.isidentifier() for part in parts):
        raise ImportProblem(
            f"{spec!r} is not a valid reference; use 'package.module:name' "
            "(or a dotted name such as 'builtins.ValueError')"
        )
    return module, attr


def add_search_paths(paths: Sequence[Path | str]) -> None:
    """Put ``paths`` at the END of ``sys.path`` (once), in the order given.

    At the end, they can add handler modules but never shadow an installed package or the
    standard library: a ``redis.py`` in the pipeline's directory or the current directory is
    not imported instead of redis-py (docs/security.md). They stay there: handler modules often
    import their siblings lazily, after validation.
    """
    for path in [str(p) for p in paths]:
        if path not in sys.path:
            sys.path.append(path)
    importlib.invalidate_caches()


def demote_working_directory() -> None:
    """Move the entry Python puts first on ``sys.path`` for ``python -m`` (the current
    directory) to the end, where :func:`add_search_paths` would have put it."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.append(sys.path.pop(0))
        importlib.invalidate_caches()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name:
            raise ImportProblem(f"no module named {name!r}") from None
        if missing and name.startswith(missing + "."):
            raise ImportProblem(f"cannot import {name!r}: no module named {missing!r}") from None
        raise ImportProblem(f"importing {name!r} failed: {_first_line(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise ImportProblem(f"importing {name!r} failed: {_first_line(exc)}") from None


def import_object(spec: str, *, search_paths: Sequence[Path] = ()) -> object:
    """The object ``spec`` names; raises :class:`ImportProblem` with a one-line reason."""
    module_name, attr = split_reference(spec)
    if search_paths:
        add_search_paths(search_paths)
    obj: Any = _import_module(module_name)
    parts = attr.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = (
                f"module {module_name!r}"
                if i == 0
                else repr(f"{module_name}:{'.'.join(parts[:i])}")
            )
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ImportProblem(f"{owner} has no attribute {part!r}{hint}") from None
        except Exception as exc:
            raise ImportProblem(f"getting {spec!r} failed: {_first_line(exc)}") from None
    return obj


def import_handler(spec: str, *, search_paths: Sequence[Path] = ()) -> Callable[..., Any]:
    """The callable ``spec`` names (a handler)."""
    obj = import_object(spec, search_paths=search_paths)
    if not callable(obj):
        raise ImportProblem(f"{spec!r} is not callable (it is {_article(obj)})")
    return obj


def is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` returns a coroutine (``async def``, also via ``__call__``)."""
    if inspect.iscoroutinefunction(obj):
        return True
    if isinstance(obj, type):
        return False  # calling a class makes an instance, whatever its __call__ does
    return inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004


def import_exception_class(spec: str, *, search_paths: Sequence[Path] = ()) -> type[BaseException]:
    """The exception class ``spec`` names (for ``retry.fatal_errors``)."""
    obj = import_object(spec, search_paths=search_paths)
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        kind = "a class" if isinstance(obj, type) else _article(obj)
        raise ImportProblem(f"{spec!r} is not an exception class (it is {kind})")
    return obj

"""``rrq-flow validate PIPELINE``: report every problem in a pipeline file, or a summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_json_flag,
    add_pipeline_argument,
    error,
    print_json,
)
from rrq_flow.config.model import PipelineConfig


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check a pipeline file and report every problem",
        description=(
            "Check a pipeline file against the schema and beyond (next graph, handler imports). "
            "Prints FILE:LINE:COL: path: message for each problem. Exit 0 valid, 1 invalid, "
            "2 the file cannot be read or is not YAML."
        ),
    )
    add_pipeline_argument(parser)
    add_json_flag(parser)
    parser.add_argument(
        "--no-imports",
        action="store_true",
        help="do not import handlers and fatal_errors classes",
    )
    parser.set_defaults(handler=run)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def describe_flow(config: PipelineConfig) -> str:
    """The ``next`` graph in one line: ``fetch -> resize``, ``a -> [b, c]``, ``a, b``."""
    targets = {t for q in config.queues.values() for t in q.next}
    roots = [name for name in config.queues if name not in targets] or list(config.queues)
    chains: list[str] = []
    shown: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop(0)
        if name in shown:
            continue
        chain = name
        shown.add(name)
        while True:
            following = config.queues[name].next
            if len(following) == 1 and following[0] not in shown:
                name = following[0]
                chain += f" -> {name}"
                shown.add(name)
                continue
            if following:
                branch = following[0] if len(following) == 1 else f"[{', '.join(following)}]"
                chain += f" -> {branch}"
                for target in following:
                    if config.queues[target].next and target not in shown:
                        pending.append(target)  # continues as a chain of its own
                    else:
                        shown.add(target)
            break
        chains.append(chain)
    return ", ".join(chains)


def summary_line(label: str, config: PipelineConfig, *, imports_checked: bool) -> str:
    processes = config.workers.processes
    line = (
        f"{label}: ok — pipeline {config.pipeline!r}, {_plural(len(config.queues), 'queue')} "
        f"({describe_flow(config)}), {processes} worker process{'' if processes == 1 else 'es'}"
    )
    return line if imports_checked else line + " (imports not checked)"


def run(args: argparse.Namespace) -> int:
    from rrq_flow.config.validate import check_file
    from rrq_flow.errors import ConfigUsageError

    path: Path = args.pipeline
    label = str(path)
    try:
        result = check_file(path, check_imports=not args.no_imports)
    except ConfigUsageError as exc:
        if args.json:
            print_json(
                {
                    "file": label,
                    "valid": False,
                    "error": str(exc),
                    "exit_code": EXIT_USAGE,
                    "problems": [],
                    "summary": None,
                }
            )
        else:
            error(str(exc))
        return EXIT_USAGE

    config, problems = result.config, result.problems
    if args.json:
        summary: dict[str, Any] = {"problems": len(problems)}
        if config is not None:
            summary |= {
                "pipeline": config.pipeline,
                "queues": list(config.queues),
                "flow": describe_flow(config),
                "worker_processes": config.workers.processes,
                "imports_checked": not args.no_imports,
            }
        print_json(
            {
                "file": label,
                "valid": config is not None,
                "problems": [p.as_dict() for p in problems],
                "summary": summary,
            }
        )
    elif config is not None:
        from rrq_flow.config.graph import render_text

        print(summary_line(label, config, imports_checked=not args.no_imports))
        print(render_text(config))
    else:
        for problem in problems:
            print(problem)
        print(_plural(len(problems), "problem"))
    sys.stdout.flush()
    return EXIT_OK if config is not None else EXIT_FAILURE

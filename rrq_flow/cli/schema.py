"""``rrq-flow schema``: print the pipeline JSON Schema (for editors and other tools)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rrq_flow.cli._common import EXIT_OK


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of pipeline files",
        description=(
            "Print the JSON Schema (draft 2020-12) of pipeline files. Save it and point your "
            "editor at it, e.g. `# yaml-language-server: $schema=./pipeline.schema.json`."
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.config.schema import schema_text

    text = schema_text()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK

"""``rrq-flow graph``: draw the pipeline's stages and edges (text, Mermaid or Graphviz dot)."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import EXIT_OK, add_pipeline_argument, load_pipeline

HELP = """\
Draw the pipeline: each stage with its executor and concurrency, and its edges — next, fan-out
(one job per item) and join (the stage runs once per group). The text form is what `validate`
prints for a valid file; mermaid pastes into Markdown, dot into Graphviz.

examples:
  rrq-flow graph pipeline.yaml
  rrq-flow graph pipeline.yaml --format mermaid
  rrq-flow graph pipeline.yaml --format dot | dot -Tsvg > pipeline.svg
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "graph",
        help="draw the pipeline's stages and edges",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("--format", choices=("text", "mermaid", "dot"), default="text")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.config.graph import render

    config = load_pipeline(args.pipeline)
    print(render(config, args.format))
    return EXIT_OK

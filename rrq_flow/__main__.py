"""``python -m rrq_flow`` is the same as the ``rrq-flow`` command."""

from rrq_flow.cli import run

run()

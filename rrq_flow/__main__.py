"""``python -m rrq_flow`` is the same as the ``rrq-flow`` command."""

from rrq_flow.config.imports import demote_working_directory

# Before anything imports redis or trio: a redis.py in the working directory must not win.
demote_working_directory()

from rrq_flow.cli import run  # noqa: E402

run()

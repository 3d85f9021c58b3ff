"""The scale suite (Sentinel, Cluster, many hosts): real topologies, so the default run leaves
it out (pyproject's addopts). Select it by marker: ``pytest -m sentinel``, ``-m cluster``,
``-m netns`` (all three: ``-m "sentinel or cluster or netns"``); ``RRQ_FAULT_JOBS`` /
``RRQ_FAULT_SEEDS`` size it like the fault suite."""

from __future__ import annotations

from tests.faults.conftest import fault_dir, procs, pytest_generate_tests

__all__ = ["fault_dir", "procs", "pytest_generate_tests"]

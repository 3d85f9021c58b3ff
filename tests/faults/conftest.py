"""Fixtures of the fault suite: a process registry that kills everything a test started, and a
seed parameter taken from ``RRQ_FAULT_SEEDS``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Processes, fault_seeds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", fault_seeds(), ids=lambda s: f"seed{s}")


@pytest.fixture
def procs() -> Iterator[Processes]:
    registry = Processes()
    try:
        yield registry
    finally:
        registry.cleanup()


@pytest.fixture
def fault_dir() -> Iterator[Path]:
    """A short scratch directory (kept only when RRQ_FAULT_KEEP is set, for post-mortems)."""
    import os

    path = Path(tempfile.mkdtemp(prefix="rrqf-"))
    yield path
    if not os.environ.get("RRQ_FAULT_KEEP"):
        shutil.rmtree(path, ignore_errors=True)

"""What the Sentinel and Cluster scenarios share: running the CLI, waiting for a job to finish
after a fault, and draining + checking a fault run at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.faults.checker import Report, check
from tests.faults.harness import FaultRun, read_histories, report

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``rrq-flow ARGS`` from the repository root (so ``tests.handlers`` imports)."""
    return subprocess.run(
        [sys.executable, "-m", "rrq_flow", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def ended_after(run: FaultRun, t: float) -> bool:
    """Whether some handler finished after ``t`` (the workers carry on)."""
    return any(e["ev"] == "end" and e["t"] > t for e in read_histories(run.history))


def finish(run: FaultRun, workers: list[Any], **figures: Any) -> Report:
    """Drain, check that no worker exited and that all stop cleanly, run the checker and
    report its figures (with ``figures`` added); the caller decides what must hold."""
    run.producer.join(90)  # type: ignore[union-attr]
    run.wait_drained(120)
    assert [w.alive() for w in workers] == [True, True], run.log_tail()
    codes = run.stop_workers()
    assert codes == [0, 0], run.log_tail()
    rep = check(run)
    rep.figures.update(figures, violations=len(rep.violations))
    report(rep.figures)
    for v in rep.violations[:20]:
        print("  ", v)
    return rep

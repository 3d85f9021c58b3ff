"""The run summary's tally keeps a bounded sample of durations (worker memory stays flat)."""

from __future__ import annotations

from rrq_flow.worker.summary import DURATIONS_KEPT, QueueTally, RunStats


def test_durations_are_all_kept_up_to_the_limit_then_sampled() -> None:
    t = QueueTally()
    for i in range(DURATIONS_KEPT):
        t.add_duration(i / 1000)
    assert sorted(t.durations) == [i / 1000 for i in range(DURATIONS_KEPT)]
    for _ in range(5 * DURATIONS_KEPT):
        t.add_duration(10.0)
    assert len(t.durations) == DURATIONS_KEPT and t.timed == 6 * DURATIONS_KEPT
    # A uniform sample: about 5 in 6 of the kept durations are the later ones.
    assert 0.75 < t.durations.count(10.0) / DURATIONS_KEPT < 0.92
    assert t.as_dict()["p50_ms"] == 10000.0 and "timed" not in t.as_dict()


def test_merged_tallies_stay_bounded() -> None:
    a, b = RunStats(), RunStats()
    for stats in (a, b):
        for _ in range(DURATIONS_KEPT):
            stats.tally("q").add_duration(0.001)
        stats.tally("q").done = DURATIONS_KEPT
    a.merge(RunStats.from_json(b.to_json()))
    q = a.tally("q")
    assert q.done == 2 * DURATIONS_KEPT and q.timed == 2 * DURATIONS_KEPT
    assert len(q.durations) == DURATIONS_KEPT

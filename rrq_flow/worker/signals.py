"""Receiving SIGTERM / SIGINT in a trio program without a late signal killing the process.

``trio.open_signal_receiver`` restores the previous handlers when its block ends and then
re-raises any signal still pending in it. With the default handlers in place, a second SIGTERM
that arrives while a worker (or the supervisor) is finishing its shutdown would kill it then:
exit code -15, no summary, and a supervisor reporting a worker "killed by SIGTERM".
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator

import trio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals(stay_ignored: Callable[[], bool]) -> Iterator[AsyncIterator[int]]:
    """``trio.open_signal_receiver(SIGTERM, SIGINT)`` whose "previous handlers" are SIG_IGN, so
    whatever arrives as the block ends is dropped instead of killing the process.

    Afterwards the handlers that were there before are put back, unless ``stay_ignored()``
    says the process was told to stop by a signal (it is on its way out: further SIGTERMs must
    not interrupt its exit).
    """
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    try:
        with trio.open_signal_receiver(*STOP_SIGNALS) as receiver:
            yield receiver
    finally:
        if not stay_ignored():
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

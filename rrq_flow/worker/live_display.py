"""The live progress block of ``run`` in a terminal, drawn by rich's Live display.

While the block is live, everything this process writes to the terminal — its logging handlers,
``print`` to stdout or stderr, and the worker processes' output that the supervisor relays — goes
through rich's console, which prints it above the block and redraws the block below it. So a log
line is never drawn over, hidden or repeated (the hand-written cursor movement this replaces moved
up over lines written between two redraws). When the block stops, its last figures stay on screen,
above whatever comes next (the run's summary).

rich is imported only here, only when a live block starts (``--progress`` on a terminal). Measured
on the 2-core CI machine under load: 165-270 ms of imports against 2.2-3.6 s for trio, coredis
and redis that every run imports anyway, and 1.8 MB of resident memory; nothing for other runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO


class LiveBlock:
    """A few lines kept at the bottom of the terminal under the scrolling log."""

    def __init__(self, out: TextIO):
        self.out = out
        self._live: Any = None
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start(self, rows: Sequence[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.out, highlight=False, soft_wrap=True)
        before = sys.stderr, sys.stdout
        self._live = Live(
            self._renderable(rows),
            console=console,
            auto_refresh=False,  # redrawn by update(): one round trip of figures, one redraw
            transient=False,  # the final figures stay on screen
            # stdout only when it is this terminal too: `run ... > file` keeps handlers'
            # prints in the file.
            redirect_stdout=_same_terminal(sys.stdout, self.out),
            redirect_stderr=True,
        )
        self._live.start(refresh=True)
        # Handlers made before the block (setup_logging's) hold the real stream: point them at
        # rich's proxy for as long as the block is live, so their lines go above it.
        proxies = {id(before[0]): sys.stderr, id(before[1]): sys.stdout, id(self.out): sys.stderr}
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                proxy = proxies.get(id(handler.stream))
                if proxy is not None and proxy is not handler.stream:
                    self._moved.append((handler, handler.setStream(proxy)))

    def update(self, rows: Sequence[str]) -> None:
        if self._live is not None:
            self._live.update(self._renderable(rows), refresh=True)

    def stop(self, rows: Sequence[str]) -> None:
        """Draw ``rows`` a last time and leave them on screen."""
        if self._live is None:
            return
        try:
            self._live.update(self._renderable(rows), refresh=True)
        finally:
            self._live.stop()
            self._live = None
            for handler, stream in self._moved:
                handler.setStream(stream)
            self._moved.clear()

    @staticmethod
    def _renderable(rows: Sequence[str]) -> Any:
        from rich.console import Group
        from rich.text import Text

        # No wrapping: one row is one terminal line, so the block's height is what rich counts.
        return Group(*(Text(row, no_wrap=True, overflow="ellipsis") for row in rows))


def _same_terminal(a: TextIO, b: TextIO) -> bool:
    try:
        return a.isatty() and b.isatty() and os.ttyname(a.fileno()) == os.ttyname(b.fileno())
    except (OSError, ValueError, AttributeError):
        return False

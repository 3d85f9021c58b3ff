"""Running trio with timers that fire on time: a timerfd armed at the run loop's next deadline.

trio blocks in ``epoll_wait``, whose timeout counts whole milliseconds, and CPython rounds it up,
so every ``trio.sleep``, ``move_on_after`` or ``fail_after`` in a worker (a handler's sleep, a
start the rate limit granted ahead, a lease renewal) wakes about a millisecond late: 1.0 ms on
average on the benchmark VM, where a handler sleeping 50 ms took 51. A timerfd has nanosecond
resolution: armed at the next deadline and watched by the same epoll, it wakes the loop within
the machine's own wake-up latency (0.3-0.4 ms there), and 50 ms jobs at concurrency 50 go from
1.04x to 1.03x the ideal span (bench/results/, 2026-12-01).

:func:`run` is ``trio.run`` with such a clock on Linux; where a timerfd cannot be made (another
system, a sandbox refusing the call) it is ``trio.run`` with trio's own clock, timers as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

log = logging.getLogger("rrq_flow.worker")

T = TypeVar("T")

_CLOCK_MONOTONIC = 1  # Linux' clockid_t; time.perf_counter() reads this clock there
_TFD_CLOEXEC, _TFD_NONBLOCK, _TFD_TIMER_ABSTIME = 0o2000000, 0o4000, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc_timerfd() -> tuple[int, Callable[[int], None]]:
    """timerfd_create and timerfd_settime from libc (Python before 3.13 has no os.timerfd_*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        create, set_c = libc.timerfd_create, libc.timerfd_settime
    except AttributeError as exc:  # not Linux
        raise OSError("no timerfd on this system") from exc
    fd: int = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    spec = _Itimerspec()  # one structure, rewritten per arming (no allocation per call)
    ref = ctypes.byref(spec)

    def settime(at_ns: int) -> None:
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(at_ns, 1_000_000_000)
        if set_c(fd, _TFD_TIMER_ABSTIME, ref, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return fd, settime


class Timerfd:
    """A non-blocking ``CLOCK_MONOTONIC`` timerfd, armed at absolute times (in nanoseconds).

    Through ``os`` where Python has it (3.13+), else through libc by ctypes. Raises OSError
    where the system has no timerfd.
    """

    def __init__(self) -> None:
        if sys.version_info >= (3, 13) and hasattr(os, "timerfd_create"):
            self.fd = os.timerfd_create(
                time.CLOCK_MONOTONIC, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC
            )
            fd = self.fd

            def settime(at_ns: int) -> None:
                os.timerfd_settime_ns(fd, flags=os.TFD_TIMER_ABSTIME, initial=at_ns)

            self._settime = settime
        else:
            self.fd, self._settime = _libc_timerfd()

    def arm(self, at_ns: int) -> None:
        """Fire once when CLOCK_MONOTONIC reaches ``at_ns`` (replaces any earlier arming)."""
        self._settime(max(at_ns, 1))  # 0 would disarm it

    def consume(self) -> None:
        """Read the expiry count, so the fd stops being readable (nothing to read is fine)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class TimerfdClock(trio.abc.Clock):
    """trio's clock (``perf_counter`` plus a random offset, as trio's own) that arms a timerfd
    at each next deadline the run loop is about to sleep towards.

    trio asks :meth:`deadline_to_sleep_time` only when it is about to block, so the timer is
    re-armed (one system call) only when the loop blocks towards a deadline other than the one
    armed. A deadline that goes away early (its scope left) leaves the timer armed: it then
    fires once for nothing, and :meth:`watch` only reads it.
    """

    def __init__(self, timer: Timerfd) -> None:
        self.timer = timer
        # As trio's SystemClock: a random offset, so that mixing these times with another
        # clock's breaks loudly rather than by coincidence.
        self.offset = random.uniform(10000, 200000)
        # The deadline the timer was last armed at. Once it has fired, trio never asks for it
        # again (no time is left to it), so it needs no forgetting.
        self._armed = math.inf

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.offset + time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        now = time.perf_counter()
        left = deadline - self.offset - now
        if left > 0 and deadline != self._armed and deadline != math.inf:
            self._armed = deadline
            try:
                self.timer.arm(round((deadline - self.offset) * 1e9))
            except OSError as exc:  # never seen; raised here, it would crash the run loop
                log.warning("timers at trio's resolution from now on: %s", exc)
                self.deadline_to_sleep_time = self._plain  # type: ignore[method-assign]
        return left

    def _plain(self, deadline: float) -> float:
        return deadline - self.offset - time.perf_counter()

    async def watch(self) -> None:
        """Consume each expiry (the wake-up itself is the point); runs until the run ends."""
        while True:
            await trio.lowlevel.wait_readable(self.timer.fd)
            self.timer.consume()


def make_clock() -> TimerfdClock | None:
    """A :class:`TimerfdClock`, or None where no timerfd can be made (trio's clock then)."""
    try:
        timer = Timerfd()
    except OSError as exc:
        log.debug("timers at trio's resolution: no timerfd (%s)", exc)
        return None
    # time.perf_counter() must read the timerfd's clock, CLOCK_MONOTONIC (it does on Linux).
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        timer.close()
        return None
    return TimerfdClock(timer)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(main)``, with a :class:`TimerfdClock` where the system allows one."""
    clock = make_clock()
    if clock is None:
        return trio.run(main)

    async def with_watch() -> T:
        trio.lowlevel.spawn_system_task(clock.watch, name="rrq_flow.precise_clock")
        return await main()

    try:
        return trio.run(with_watch, clock=clock)
    finally:
        clock.timer.close()

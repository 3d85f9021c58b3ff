"""Serve the dashboard with Hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

from rrq_flow.client.admin import Admin
from rrq_flow.dashboard.app import Dashboard, create_app
from rrq_flow.dashboard.security import Guard

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_hosts(host: str) -> list[str] | None:
    """On a loopback address only loopback Host headers are served: a page elsewhere that
    rebinds its own name to 127.0.0.1 cannot read the dashboard. Elsewhere any Host."""
    if host in LOOPBACK:
        return ["127.0.0.1", "localhost", "[::1]", "::1"]
    return None


async def serve(
    admin: Admin,
    guard: Guard,
    host: str,
    port: int,
    announce: Callable[[list[str]], None],
) -> None:
    """Serve until SIGINT/SIGTERM; ``announce`` gets the bound URLs once listening."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [bind_address(host, port)]
    config.accesslog = None
    config.errorlog = "-"  # a request that fails unexpectedly is logged on stderr...
    config.loglevel = "WARNING"  # ...but not the "Running on" line: the CLI says where
    config.graceful_timeout = 2.0
    dash = Dashboard(admin, guard)
    app: Any = create_app(dash, allowed_hosts(host))

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stop = trio.Event()

        async def shutdown_trigger() -> None:
            await stop.wait()

        async def watch_signals() -> None:
            async for _ in signals:
                stop.set()
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            nursery.start_soon(dash.sample_forever)
            urls = await nursery.start(
                lambda task_status: hypercorn_serve(
                    app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
                )
            )
            announce(list(urls))
            await stop.wait()
            # hypercorn returns once its shutdown trigger fired and connections closed
            with trio.move_on_after(config.graceful_timeout + 1):
                while len(nursery.child_tasks) > 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    sys.stdout.flush()

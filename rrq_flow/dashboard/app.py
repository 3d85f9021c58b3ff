"""The dashboard's ASGI application (Starlette): server-rendered pages and a JSON API.

Every figure comes from the same Admin functions the CLI's status, workers, job and dlq commands
use (blocking redis-py calls, run in worker threads), and the API answers with the same JSON
shapes as their ``--json``. Pages are Jinja2 templates with autoescaping on, so every value from
Redis is escaped; the Content-Security-Policy allows only the package's own script and style, so
even a value that escaped the escaping could not run. Pages refresh themselves: the script
fetches the page again every 2 s with ``X-Fragment: 1`` and swaps in the new main part.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rrq_flow.cli.dlq import dlq_list_json, requeue_json
from rrq_flow.cli.status import fmt_age, fmt_time, status_json, status_snapshot
from rrq_flow.client import browse
from rrq_flow.client.admin import Admin
from rrq_flow.dashboard.history import ThroughputHistory
from rrq_flow.dashboard.security import COOKIE, CSRF_HEADER, Guard
from rrq_flow.dashboard.svg import bar_chart
from rrq_flow.errors import JobNotFound, UnknownQueueError

HERE = Path(__file__).parent
DLQ_WINDOW = 1000  # newest dead jobs an error-type filter looks through
DLQ_SHOWN = 200
PAGE = 50
KNOWN_QUEUE_FIELDS = (
    "ready",
    "scheduled",
    "retrying",
    "active",
    "done",
    "dead",
    "failed",
    "cancelled",
    "enqueued",
    "oldest_ready_age",
    "throughput_per_min",
)

T = TypeVar("T")


class Dashboard:
    """The state the handlers share: the Admin, the guard and the throughput history."""

    def __init__(self, admin: Admin, guard: Guard):
        self.admin = admin
        self.guard = guard
        self.history = ThroughputHistory()
        self.limiter = anyio.CapacityLimiter(4)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(
            time=fmt_time,
            age=fmt_age,
            pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str),
            q=lambda v: quote(str(v), safe=""),
        )

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a blocking Admin call in a worker thread."""
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    async def sample_throughput(self) -> None:
        now, rings = await self.call(lambda: browse.throughput(self.admin))
        self.history.add(now, rings)

    async def sample_forever(self, every: float = 5.0) -> None:
        """Read the rings often enough that no 10 s bucket is missed (the ring keeps 80 s)."""
        while True:
            # Redis away: the pages say so; the chart just has a gap.
            with contextlib.suppress(Exception):
                await self.sample_throughput()
            await anyio.sleep(every)

    # --- rendering ------------------------------------------------------------------------

    def page(self, request: Request, template: str, code: int = 200, **ctx: Any) -> Response:
        fragment = request.headers.get("x-fragment") == "1"
        logged_in = self.guard.logged_in(request.cookies.get(COOKIE))
        html = self.env.get_template(template).render(
            fragment=fragment,
            allow_actions=self.guard.allow_actions,
            logged_in=logged_in,
            csrf=self.guard.csrf_token if logged_in and self.guard.allow_actions else "",
            pipeline=self.admin.config.pipeline,
            queue_names=list(self.admin.config.queues),
            now=time.time(),
            **ctx,
        )
        return HTMLResponse(html, status_code=code)


# --- pages ----------------------------------------------------------------------------------


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


async def overview(request: Request) -> Response:
    dash = _dash(request)
    status, workers = await dash.call(lambda: _status(dash.admin))
    if dash.history.since is None:
        await dash.sample_throughput()
    history = dash.history
    charts = {
        name: bar_chart(history.per_minute(name), width=120, height=24, label=f"{name} per minute")
        for name in status["queues"]
    }
    total = history.per_minute()
    return dash.page(
        request,
        "overview.html",
        status=status,
        workers=workers,
        known=KNOWN_QUEUE_FIELDS,
        chart=bar_chart(total, width=600, height=120, label="jobs finished per minute"),
        charts=charts,
        chart_total=sum(total),
        chart_covered=history.covered,
    )


def _status(admin: Admin) -> tuple[dict[str, Any], list[Any]]:
    """``status --json`` and the workers (all of them, for the table)."""
    queues, workers, schedules, now = status_snapshot(admin)
    return status_json(queues, workers, now, schedules), workers


async def queue_page(request: Request) -> Response:
    dash = _dash(request)
    name = request.path_params["queue"]
    state = request.query_params.get("state", "ready")
    offset = _int_param(request, "offset", 0)
    page = await dash.call(lambda: browse.queue_jobs(dash.admin, name, state, offset, PAGE))
    counts = await dash.call(lambda: dash.admin.queue_status([name])[0].as_dict())
    return dash.page(
        request, "queue.html", page=page, states=browse.STATES, counts=counts, per_page=PAGE
    )


async def job_page(request: Request) -> Response:
    dash = _dash(request)
    job_id = request.path_params["job_id"]
    detail = await dash.call(lambda: dash.admin.job(job_id))
    data = detail.as_dict()
    return dash.page(request, "job.html", data=data, job=data["job"])


async def job_lookup(request: Request) -> Response:
    job_id = request.query_params.get("id", "").strip()
    if not job_id:
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/jobs/{quote(job_id, safe='')}", status_code=303)


async def dead_page(request: Request) -> Response:
    dash = _dash(request)
    queue = request.query_params.get("queue") or None
    error_type = request.query_params.get("error_type") or None
    data = await dash.call(lambda: _dead(dash.admin, queue, error_type, DLQ_SHOWN))
    return dash.page(
        request, "dead.html", data=data, queue_filter=queue or "", error_filter=error_type or ""
    )


def _dead(admin: Admin, queue: str | None, error_type: str | None, shown: int) -> dict[str, Any]:
    """``dlq list --json`` of the newest ``shown`` entries matching the filters, plus the error
    types seen among the newest DLQ_WINDOW (for the filter's choices)."""
    page = admin.dlq_list(queue, DLQ_WINDOW if error_type else shown)
    data = dlq_list_json(page)
    entries = data["entries"]
    data["error_types"] = sorted({e["error_type"] or "" for e in entries} - {""})
    if error_type:
        entries = [e for e in entries if e["error_type"] == error_type]
    data["entries"] = entries[:shown]
    data["matching"] = len(entries)
    return data


async def login_page(request: Request) -> Response:
    dash = _dash(request)
    token = request.query_params.get("token")
    if token is not None:
        if dash.guard.token_ok(token):
            return _logged_in(dash, "/")
        return dash.page(request, "login.html", code=403, failed=True)
    return dash.page(request, "login.html", failed=False)


async def login_submit(request: Request) -> Response:
    dash = _dash(request)
    body = (await request.body()).decode(errors="replace")
    token = (parse_qs(body).get("token") or [""])[0].strip()
    if not dash.guard.token_ok(token):
        return dash.page(request, "login.html", code=403, failed=True)
    return _logged_in(dash, "/dead")


def _logged_in(dash: Dashboard, to: str) -> Response:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        COOKIE, dash.guard.session_value, httponly=True, samesite="strict", path="/"
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- the JSON API ---------------------------------------------------------------------------


async def api_status(request: Request) -> Response:
    dash = _dash(request)
    status, _ = await dash.call(lambda: _status(dash.admin))
    return JSONResponse(status)


async def api_workers(request: Request) -> Response:
    dash = _dash(request)
    workers, now = await dash.call(lambda: (dash.admin.workers(), dash.admin.server_time()))
    return JSONResponse({"time": now, "workers": [w.as_dict() for w in workers]})


async def api_throughput(request: Request) -> Response:
    dash = _dash(request)
    await dash.sample_throughput()
    h = dash.history
    minutes = {name: h.per_minute(name) for name in dash.admin.config.queues}
    return JSONResponse({"time": h.now, "covered_seconds": h.covered, "per_minute": minutes})


async def api_queue_jobs(request: Request) -> Response:
    dash = _dash(request)
    name = request.path_params["queue"]
    state = request.query_params.get("state", "ready")
    offset = _int_param(request, "offset", 0)
    limit = _int_param(request, "limit", PAGE)
    page = await dash.call(lambda: browse.queue_jobs(dash.admin, name, state, offset, limit))
    return JSONResponse(page.as_dict())


async def api_job(request: Request) -> Response:
    dash = _dash(request)
    job_id = request.path_params["job_id"]
    detail = await dash.call(lambda: dash.admin.job(job_id))
    return JSONResponse(detail.as_dict())


async def api_dlq(request: Request) -> Response:
    dash = _dash(request)
    queue = request.query_params.get("queue") or None
    error_type = request.query_params.get("error_type") or None
    limit = _int_param(request, "limit", 50)
    data = await dash.call(lambda: _dead(dash.admin, queue, error_type, limit))
    return JSONResponse(data)


async def api_requeue(request: Request) -> Response:
    dash = _dash(request)
    body = await _action_body(request)
    ids, queue, dry_run = _targets(body)
    result = await dash.call(lambda: dash.admin.dlq_requeue(ids, queue=queue, dry_run=dry_run))
    if not dry_run:
        _audit(request, "requeued", {q: len(v) for q, v in result.moved.items()})
    return JSONResponse(requeue_json(result))


async def api_purge(request: Request) -> Response:
    """``dlq purge --json``'s shape: {"count", "purged": {queue: n}}; with dry_run, what would
    be deleted."""
    dash = _dash(request)
    body = await _action_body(request)
    ids, queue, dry_run = _targets(body)
    admin = dash.admin

    def purge() -> dict[str, int]:
        if ids is None:
            return admin.dlq_counts(queue) if dry_run else admin.dlq_purge(queue)
        return browse.dead_counts(admin, ids) if dry_run else browse.purge_dead(admin, ids)

    purged = await dash.call(purge)
    if not dry_run:
        _audit(request, "purged", purged)
    return JSONResponse({"dry_run": dry_run, "count": sum(purged.values()), "purged": purged})


def _audit(request: Request, verb: str, per_queue: dict[str, int]) -> None:
    """One line on stderr per action that changed something: who (address), what, how many."""
    who = request.client.host if request.client else "?"
    detail = ", ".join(f"{q} {n}" for q, n in per_queue.items() if n) or "nothing"
    print(
        f"rrq-flow dashboard: {who} {verb} {sum(per_queue.values())} dead job(s) ({detail})",
        file=sys.stderr,
        flush=True,
    )


class ActionRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def _action_body(request: Request) -> dict[str, Any]:
    """Check the guard, then parse the JSON body; raises ActionRefused."""
    dash = _dash(request)
    host = request.headers.get("host", "")
    refused = dash.guard.refuse_action(
        cookie=request.cookies.get(COOKIE),
        authorization=request.headers.get("authorization"),
        csrf=request.headers.get(CSRF_HEADER),
        origin=request.headers.get("origin"),
        own_origins={f"http://{host}", f"https://{host}"},
    )
    if refused is not None:
        raise ActionRefused(*refused)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ActionRefused(415, "send the action as application/json")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ActionRefused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ActionRefused(400, "the body must be a JSON object")
    return body


def _targets(body: dict[str, Any]) -> tuple[list[str] | None, str | None, bool]:
    """(ids or None for all, queue, dry_run) from an action body: {"ids": [...]} or
    {"all": true}, optional "queue" and "dry_run"."""
    ids, every = body.get("ids"), body.get("all") is True
    if every == (ids is not None):
        raise ActionRefused(400, 'give "ids" (a list of job ids) or "all": true, not both')
    if ids is not None and (
        not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids)
    ):
        raise ActionRefused(400, '"ids" must be a non-empty list of job ids')
    queue = body.get("queue") or None
    if queue is not None and not isinstance(queue, str):
        raise ActionRefused(400, '"queue" must be a queue name')
    return ids, queue, body.get("dry_run") is True


def _int_param(request: Request, name: str, default: int) -> int:
    try:
        return max(0, int(request.query_params.get(name, default)))
    except ValueError:
        return default


# --- errors and the application -------------------------------------------------------------


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return _dash(request).page(request, "error.html", code=status, message=message)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ActionRefused)
    return _error(request, exc.status, exc.message)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, str(exc))


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _redis_down(request: Request, exc: Exception) -> Response:
    return _error(request, 503, f"cannot reach Redis: {exc}")


async def _favicon(request: Request) -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for key, value in SECURITY_HEADERS.items():
                    if key.encode() not in names:
                        headers.append((key.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(dash: Dashboard, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app; ``allowed_hosts``: the Host headers accepted (against DNS rebinding when
    bound to loopback), None for any."""
    import redis

    routes = [
        Route("/", overview),
        Route("/queues/{queue}", queue_page),
        Route("/jobs", job_lookup),
        Route("/jobs/{job_id}", job_page),
        Route("/dead", dead_page),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/favicon.ico", _favicon),
        Route("/api/status", api_status),
        Route("/api/workers", api_workers),
        Route("/api/throughput", api_throughput),
        Route("/api/queues/{queue}/jobs", api_queue_jobs),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/dlq", api_dlq),
        Route("/api/dlq/requeue", api_requeue, methods=["POST"]),
        Route("/api/dlq/purge", api_purge, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ActionRefused: _refused,
            JobNotFound: _not_found,
            UnknownQueueError: _not_found,
            ValueError: _bad_request,
            redis.exceptions.ConnectionError: _redis_down,
            redis.exceptions.TimeoutError: _redis_down,
        },
    )
    app.state.dashboard = dash
    return app

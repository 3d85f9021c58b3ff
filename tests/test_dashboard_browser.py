"""The dashboard in a real headless Chromium (Debian's, driven by Playwright's Python API),
against a real Redis, a running worker and a running dashboard process.

Run with ``pytest -m browser``. Screenshots of each page go to ``RRQ_DASHBOARD_SCREENSHOTS``
(docs/images/ holds the ones docs/operations.md shows) or to the test's temporary directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard_env import PWN, Env, running_env

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIELDS = ("ready", "scheduled", "retrying", "active", "done", "dead", "failed", "cancelled")


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    if "browser" not in str(request.config.getoption("markexpr") or ""):
        pytest.skip("browser tests run with `pytest -m browser` (they need Chromium)")
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (CI installs it)")
    if not os.environ.get("CI"):
        pytest.importorskip("playwright", reason="pip install -e '.[dev]' brings playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    with running_env(tmp_path, redis_url) as e:
        yield e


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RRQ_DASHBOARD_SCREENSHOTS") or tmp_path / "shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


class Console:
    """Every console error and uncaught page error of a page."""

    def __init__(self, page: Any):
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def _post(page: Any, path: str, body: str, csrf: bool = True) -> Any:
    """POST from inside the page, as its own script would (same origin, cookies)."""
    return page.evaluate(
        """async ([path, body, csrf]) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const headers = {"Content-Type": "application/json"};
            if (csrf) headers["X-CSRF-Token"] = token;
            const r = await fetch(path, {method: "POST", headers, body});
            return {status: r.status, body: await r.json()};
        }""",
        [path, body, csrf],
    )


def test_dashboard_in_a_browser(browser: Any, env: Env, shots: Path) -> None:
    env.start_worker()
    dash = env.start_dashboard("--allow-actions")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    console = Console(page)

    # Overview: the numbers are status --json's; the chart renders; it refreshes in place;
    # fields the status JSON has beyond the counts (here a pause) are shown.
    with env.admin() as admin:
        admin.pause("ok")
    page.goto(dash.url + "/")
    assert page.locator('tr[data-queue="ok"] [data-field="flow.paused"]').is_visible()
    status = env.cli_json("status")
    for queue, figures in status["queues"].items():
        for field in FIELDS:
            cell = page.locator(f'tr[data-queue="{queue}"] [data-field="{field}"]')
            assert cell.inner_text().strip() == str(figures[field]), (queue, field)
    chart = page.locator("#throughput svg.chart")
    assert chart.is_visible()
    assert int(chart.get_attribute("data-bars") or 0) == 60
    drawn = page.locator("#throughput svg.chart rect")
    assert drawn.count() == 60
    assert int(chart.get_attribute("data-total") or 0) >= 6  # the six ok jobs at least
    heights = [float(drawn.nth(i).get_attribute("height") or 0) for i in range(60)]
    assert max(heights) > 0
    page.evaluate("window.__sameDocument = true")
    refreshed = "() => Number(document.body.dataset.refreshes || 0) >= 1"
    page.wait_for_function(refreshed, timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # refreshed without a reload
    assert page.locator("#workers tbody tr").count() == 1
    page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

    # Queue page: the dead jobs, newest first, through the index.
    page.goto(dash.url + "/queues/flaky?state=dead")
    assert page.locator("#jobs tbody tr").count() == 3
    page.screenshot(path=str(shots / "dashboard-queue.png"), full_page=True)

    # Job page: the traceback shows; the script in the error message is text, never run.
    with env.admin() as admin:
        pwned = next(e.id for e in admin.dlq_list().entries if PWN in (e.error_message or ""))
    page.goto(f"{dash.url}/jobs/{pwned}")
    traceback = page.locator("pre.traceback").first.inner_text()
    assert "Traceback (most recent call last)" in traceback and "ValueError" in traceback
    assert PWN in page.locator(".error .emsg").first.inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

    # Dead letters: not logged in, no action is offered and a forged one is refused.
    page.goto(dash.url + "/dead")
    assert page.locator("button[data-action]").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    refused = _post(page, "/api/dlq/requeue", f'{{"ids": ["{pwned}"]}}')
    assert refused["status"] == 401, refused
    console.errors = [e for e in console.errors if "401" not in e]  # that refusal, expected

    # Log in with the token, then requeue one job from the page, through the confirmation.
    page.goto(dash.url + "/login")
    page.fill('input[name="token"]', dash.token or "")
    page.click("#login button")
    page.wait_for_url(dash.url + "/dead")
    env.fixed.touch()  # the cause is fixed: the requeued job will succeed
    page.select_option('select[name="queue"]', "flaky")
    page.click(".filters button")
    page.wait_for_url("**/dead?queue=flaky**")
    assert page.locator("#dead tbody tr").count() == 3
    page.check(f'input[name="job"][value="{pwned}"]')
    page.click('button[data-action="requeue"][data-scope="selected"]')
    page.wait_for_selector("#confirm:not([hidden])")
    assert "Requeue 1 dead job(s) (flaky 1)?" in page.inner_text("#confirm-text")
    assert env.status_of(pwned) == "dead"  # nothing moved before the confirmation
    page.screenshot(path=str(shots / "dashboard-dead-letters.png"), full_page=True)
    page.click("#confirm-yes")
    page.wait_for_selector("#flash:not([hidden])")
    assert "requeued 1 dead job(s)" in page.inner_text("#flash")
    deadline = time.monotonic() + 60
    while env.status_of(pwned) != "done":  # the running worker ran it
        assert time.monotonic() < deadline, env.status_of(pwned)
        time.sleep(0.2)
    page.wait_for_function("() => document.querySelectorAll('#dead tbody tr').length === 2")
    # Purge all of the queue: the confirmation names the count; Cancel first moves nothing.
    page.click('button[data-action="purge"][data-scope="all"]')
    page.wait_for_selector("#confirm:not([hidden])")
    assert "Delete for good 2 dead job(s) (flaky 2)?" in page.inner_text("#confirm-text")
    page.click("#confirm-no")
    assert env.status_of(next(j for j in env.dead_ids if j != pwned)) == "dead"
    page.click('button[data-action="purge"][data-scope="all"]')
    page.wait_for_selector("#confirm:not([hidden])")
    page.click("#confirm-yes")
    page.wait_for_function("() => document.getElementById('flash').textContent.includes('deleted')")
    assert "deleted 2 dead job(s)" in page.inner_text("#flash")
    page.wait_for_function("() => document.querySelectorAll('#dead tbody tr').length === 0")
    assert [env.status_of(j) for j in env.dead_ids if j != pwned] == [None, None]
    page.goto(f"{dash.url}/jobs/{pwned}")
    assert page.inner_text("#job-status") == "done"
    assert '"ran"' in page.inner_text("#result")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert console.errors == []
    context.close()


def test_requeue_is_refused_by_a_read_only_dashboard(browser: Any, env: Env) -> None:
    dash = env.start_dashboard(token="a-token-of-some-length")
    context = browser.new_context()
    page = context.new_page()
    page.goto(dash.url + "/dead")
    assert page.locator("button[data-action]").count() == 0
    assert "Read-only" in page.inner_text("main")
    page.goto(dash.url + "/login?token=a-token-of-some-length")  # the token is right, but...
    page.goto(dash.url + "/dead")
    refused = _post(page, "/api/dlq/requeue", f'{{"ids": ["{env.dead_ids[0]}"]}}')
    assert refused["status"] == 403 and "--allow-actions" in refused["body"]["error"]
    assert env.status_of(env.dead_ids[0]) == "dead"
    context.close()

"""`rrq-flow dashboard` over HTTP, without a browser: the API's shapes are the CLI's --json, the
actions' guards, escaping, and the Host check. Real Redis, real worker, real server process."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrq_flow.dashboard.security import ENV_TOKEN
from tests.dashboard_env import ENV, PWN, Env, running_env
from tests.test_cli_run import CLI, cli

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    with running_env(tmp_path, redis_url) as e:
        yield e


def test_api_answers_with_the_clis_json_shapes_and_pages_escape_values(env: Env) -> None:
    dash = env.start_dashboard()
    status = dash.get_json("/api/status")
    cli_status = env.cli_json("status")
    for queue, figures in cli_status["queues"].items():
        # throughput_per_min moves on as the minute passes; the counts do not here.
        figures.pop("throughput_per_min")
        assert {k: status["queues"][queue][k] for k in figures} == figures
    assert status["workers"] == cli_status["workers"]
    assert status["schedules"] == cli_status["schedules"]
    assert set(dash.get_json("/api/workers")) == {"time", "workers"}  # as `workers --json`
    dlq = dash.get_json("/api/dlq")
    cli_dlq = env.cli_json("dlq list")
    assert {k: dlq[k] for k in cli_dlq} == cli_dlq
    assert dash.get_json("/api/dlq?error_type=ValueError")["matching"] == 3
    assert dash.get_json("/api/dlq?queue=ok&error_type=ValueError")["entries"] == []
    job = dash.get_json(f"/api/jobs/{env.dead_ids[0]}")
    assert job == env.cli_json("job", env.dead_ids[0])
    page = dash.get_json("/api/queues/flaky/jobs?state=dead&limit=2")
    assert (page["total"], len(page["jobs"])) == (3, 2)
    assert [j["id"] for j in page["jobs"]] == [
        j["id"] for j in dash.get_json("/api/queues/flaky/jobs?state=dead")["jobs"][:2]
    ]
    assert sum(dash.get_json("/api/throughput")["per_minute"]["ok"]) == 6
    # Ready jobs of every priority level are listed (each level is its own ZSET), newest first.
    with env.admin() as admin:
        waiting = [admin.client.enqueue("ok", i, priority=p) for i, p in enumerate((0, 5, -1))]
        later = admin.client.enqueue("ok", 9, priority=5, defer="1h")
    page = dash.get_json("/api/queues/ok/jobs?state=ready")
    assert page["total"] == 3 and {j["id"] for j in page["jobs"]} == set(waiting)
    second = dash.get_json("/api/queues/ok/jobs?state=ready&offset=1&limit=1")["jobs"]
    assert [j["id"] for j in second] == [page["jobs"][1]["id"]]
    assert [j["id"] for j in dash.get_json("/api/queues/ok/jobs?state=scheduled")["jobs"]] == [
        later
    ]
    code, body, _ = dash.get("/api/queues/nope/jobs")
    assert code == 404 and "nope" in json.loads(body)["error"]

    # Every value is escaped; the CSP would stop a script that was not.
    with env.admin() as admin:
        pwned = next(e.id for e in admin.dlq_list().entries if PWN in (e.error_message or ""))
    for path in (f"/jobs/{pwned}", "/dead", "/queues/flaky?state=dead", "/queues/ok"):
        code, body, headers = dash.get(path)
        assert code == 200, body
        assert "<script>window" not in body, path
        assert "<b>0</b>" not in body, path  # an argument
        assert "script-src 'self'" in headers["content-security-policy"]
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in dash.get(f"/jobs/{pwned}")[1]
    code, _, _ = dash.get("/", Host="attacker.example:8321")  # DNS rebinding
    assert code == 400


def test_actions_are_refused_without_allow_actions(env: Env) -> None:
    dash = env.start_dashboard(token="a-token-of-some-length")
    body = json.dumps({"ids": env.dead_ids[:1]}).encode()
    auth = {"Authorization": "Bearer a-token-of-some-length", **JSON}
    code, answer, _ = dash.request("POST", "/api/dlq/requeue", body, auth)
    assert code == 403 and "--allow-actions" in answer
    assert env.status_of(env.dead_ids[0]) == "dead"


def test_actions_need_the_token_and_the_csrf_token(env: Env) -> None:
    env.start_worker()
    dash = env.start_dashboard("--allow-actions")
    assert dash.token and len(dash.token) >= 16
    body = json.dumps({"ids": env.dead_ids[:1]}).encode()
    code, answer, _ = dash.request("POST", "/api/dlq/requeue", body, JSON)
    assert code == 401, answer
    wrong = {"Authorization": "Bearer not-the-token", **JSON}
    assert dash.request("POST", "/api/dlq/requeue", body, wrong)[0] == 401
    # Logged in by cookie, but no CSRF token: refused.
    code, _, headers = dash.request("POST", "/login", f"token={dash.token}".encode(), {})
    assert code == 303
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    code, answer, _ = dash.request("POST", "/api/dlq/requeue", body, {"Cookie": cookie, **JSON})
    assert code == 403 and "CSRF" in answer
    assert env.status_of(env.dead_ids[0]) == "dead"
    # With the token: a dry run moves nothing, a real one moves the job, which then runs.
    env.fixed.touch()
    auth = {"Authorization": f"Bearer {dash.token}", **JSON}
    dry = json.dumps({"ids": env.dead_ids[:1], "dry_run": True}).encode()
    code, answer, _ = dash.request("POST", "/api/dlq/requeue", dry, auth)
    assert code == 200 and json.loads(answer)["count"] == 1
    assert env.status_of(env.dead_ids[0]) == "dead"
    code, answer, _ = dash.request("POST", "/api/dlq/requeue", body, auth)
    assert json.loads(answer) == {
        "dry_run": False,
        "count": 1,
        "moved": {"flaky": env.dead_ids[:1]},
        "not_found": [],
        "not_in_dlq": [],
    }
    deadline = time.monotonic() + 60
    while env.status_of(env.dead_ids[0]) != "done":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Purge the selected one of the two left: only it goes.
    purge = json.dumps({"ids": env.dead_ids[1:2]}).encode()
    code, answer, _ = dash.request("POST", "/api/dlq/purge", purge, auth)
    assert json.loads(answer)["purged"] == {"flaky": 1}
    assert [e["id"] for e in env.cli_json("dlq list")["entries"]] == env.dead_ids[2:]
    assert env.status_of(env.dead_ids[1]) is None
    audit = dash.stop()  # one line per action that changed something, dry runs not
    assert audit.count("rrq-flow dashboard: 127.0.0.1 ") == 2, audit
    assert "requeued 1 dead job(s) (flaky 1)" in audit and "purged 1 dead job(s) (flaky 1)" in audit


def test_a_short_token_and_a_taken_port_are_one_clear_line(env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        out = cli("dashboard", str(env.pipeline), "--port", port)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("rrq-flow: cannot listen on 127.0.0.1:"), out.stderr
    out = subprocess.run(
        [*CLI, "dashboard", str(env.pipeline), "--allow-actions"],
        env={**ENV, ENV_TOKEN: "short"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "at least 16 characters" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

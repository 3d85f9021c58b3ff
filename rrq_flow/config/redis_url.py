"""Checking a ``redis.url`` the way it will be used, and showing it without its password.

The schema only checks the scheme; this module checks what the connection code needs (a
numeric port in range, a numeric db, a socket path), so that ``rrq-flow validate`` refuses a
URL that would fail later, at connect time. Messages never contain the password: URLs are shown
through :func:`rrq_flow.redact.redact_url` (``redis://user:***@host:port/db``).
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs, urlsplit

from rrq_flow.redact import redact_url

SCHEMES = ("redis", "rediss", "unix")


def _db_problem(parts: SplitResult, path_db: str) -> str | None:
    query = parse_qs(parts.query, keep_blank_values=True)
    candidates = [("path", path_db)] if path_db else []
    candidates += [("?db=", value) for value in query.get("db", [])]
    for where, value in candidates:
        if not value.isdigit() or not value.isascii():
            return f"the database number ({where} {value!r}) must be a whole number such as 0"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be used to connect to Redis, or None when it can."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{redact_url(url)} is not a URL: {exc}"
    shown = redact_url(url)
    if parts.scheme not in SCHEMES:
        return f"{shown}: use a redis://, rediss:// or unix:// URL"
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return f"{shown}: a URL cannot contain spaces or control characters"
    if parts.fragment:
        return f"{shown}: a Redis URL has no '#fragment'"
    if parts.scheme == "unix":
        if not parts.path:
            return f"{shown}: unix:// needs the socket's path, e.g. unix:///run/redis.sock"
        problem = _db_problem(parts, "")
        return f"{shown}: {problem}" if problem else None
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        return f"{shown}: the port {port_text!r} must be a number from 1 to 65535"
    if port == 0:
        return f"{shown}: the port must be a number from 1 to 65535"
    path = parts.path.removeprefix("/")
    if "/" in path:
        return f"{shown}: the path is the database number only, e.g. redis://host:6379/0"
    problem = _db_problem(parts, path)
    return f"{shown}: {problem}" if problem else None

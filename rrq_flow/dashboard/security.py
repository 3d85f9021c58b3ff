"""Who may change things through the dashboard, and how a browser proves it.

Read-only unless started with ``--allow-actions``. Then an action (requeue, purge) needs the
token printed at start (or given in ``RRQ_FLOW_DASHBOARD_TOKEN``): a browser trades it once at
``/login`` for an HttpOnly, SameSite=Strict session cookie; a script sends it as
``Authorization: Bearer``. Every action is a POST of JSON that must also carry the CSRF token of
the page (``X-CSRF-Token``), which only a page served to the logged-in browser contains, and, when
the browser sends one, an ``Origin`` equal to the dashboard's own. Both derived values are HMACs of
the token, so nothing needs storing and a restart with another token logs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

ENV_TOKEN = "RRQ_FLOW_DASHBOARD_TOKEN"
COOKIE = "rrq_flow_dashboard"
CSRF_HEADER = "x-csrf-token"
MIN_TOKEN_LENGTH = 16


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Guard:
    allow_actions: bool
    token: str
    token_from_env: bool

    @classmethod
    def create(cls, allow_actions: bool) -> Guard:
        """The token from the environment, or a new random one; ValueError if the given one is
        too short to be a secret."""
        given = os.environ.get(ENV_TOKEN, "")
        if given and len(given) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{ENV_TOKEN} must be at least {MIN_TOKEN_LENGTH} characters")
        return cls(allow_actions, given or secrets.token_urlsafe(24), bool(given))

    @property
    def session_value(self) -> str:
        return _derive(self.token, "session")

    @property
    def csrf_token(self) -> str:
        return _derive(self.token, "csrf")

    def token_ok(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate), self.token)

    def logged_in(self, cookie: str | None, authorization: str | None = None) -> bool:
        if cookie and hmac.compare_digest(cookie, self.session_value):
            return True
        if authorization and authorization.lower().startswith("bearer "):
            return self.token_ok(authorization[7:].strip())
        return False

    def refuse_action(
        self,
        *,
        cookie: str | None,
        authorization: str | None,
        csrf: str | None,
        origin: str | None,
        own_origins: set[str],
    ) -> tuple[int, str] | None:
        """Why an action request is refused (HTTP status, message), or None to allow it."""
        if not self.allow_actions:
            return 403, "read-only dashboard: start it with --allow-actions to requeue or purge"
        if not self.logged_in(cookie, authorization):
            return 401, "log in with the dashboard's token first (/login)"
        bearer = bool(authorization) and self.logged_in(None, authorization)
        if not bearer and not (csrf and hmac.compare_digest(csrf, self.csrf_token)):
            return 403, "missing or wrong CSRF token: reload the page"
        if origin is not None and origin not in own_origins:
            return 403, f"cross-origin request refused (Origin {origin})"
        return None

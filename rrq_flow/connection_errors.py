"""Say in one line why Redis refused or could not be reached, without repeating a secret.

Both clients (coredis, redis-py) and the idle wait's own connection raise different exception
types for the same cause, and coredis wraps them in exception groups and generic "Unable to
establish a connection" errors with the real cause in ``__cause__``. :func:`explain` walks all of
that and returns one of:

- ``authentication failed for user U at URL: ...`` (wrong password, disabled user);
- ``permission denied: user U lacks COMMAND ...`` (an ACL rule without a command rrq-flow needs);
- ``TLS certificate problem with URL: ...`` (unknown CA, host name mismatch, expired);
- ``Redis at URL refused the call: ...`` (an error reply such as OOM or MISCONF, with what to
  do about it);
- ``cannot reach Redis at URL: ...`` (anything else: refused, timed out, reset).

Every one of them is exit code 3 on the command line.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator

from rrq_flow.errors import RedisUnavailable
from rrq_flow.redact import redact_url, scrub

_NOPERM_COMMAND = re.compile(r"no permissions to run the '([^']+)' command")
_NOPERM_KEY = re.compile(r"no permissions to access (?:one of the keys|a key)")
_NOPERM_CHANNEL = re.compile(r"no permissions to access one of the channels")
_SCRIPT_DENIED = re.compile(r"can't run this command or subcommand", re.IGNORECASE)
_AUTH = re.compile(
    r"WRONGPASS|invalid username-password pair|invalid password|NOAUTH|"
    r"Authentication required|user is disabled",
    re.IGNORECASE,
)
_AUTH_TYPES = ("AuthenticationError", "AuthenticationFailureError", "AuthenticationRequiredError")
_NOPERM_TYPES = ("NoPermissionError", "AuthorizationError")


class RedisAccessDenied(RedisUnavailable):
    """Redis answered but refused us: authentication failed or an ACL permission is missing."""


class RedisRefused(RedisUnavailable):
    """Redis answered a call with an error reply: out of memory, a read-only replica, ..."""


def unusable(exc: BaseException, url: str) -> RedisUnavailable:
    """The error to raise for a Redis that failed a start-up call, of the kind :func:`explain`
    names: access denied (authentication, permission), refused (any other error reply: OOM,
    READONLY, LOADING...), or unreachable."""
    text = explain(exc, url)
    if is_access_error(exc):
        return RedisAccessDenied(text)
    if _is_refusal(exc):
        return RedisRefused(text)
    return RedisUnavailable(text)


def stop_reason(exc: BaseException) -> str:
    """What a worker's summary says stopped it, for a Redis it could not use."""
    if isinstance(exc, RedisAccessDenied):
        return "Redis denied access"
    if isinstance(exc, RedisRefused):
        return "Redis refused the call"
    return "Redis unreachable"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the members of exception groups, and their causes and contexts, once each."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def user_of(url: str) -> str:
    """The ACL user a URL logs in as ('default' without one)."""
    from urllib.parse import unquote, urlparse

    try:
        name = urlparse(url).username
    except ValueError:
        name = None
    return unquote(name) if name else "default"


def kind(exc: BaseException) -> str:
    """'auth', 'noperm', 'tls' or 'unreachable' — what :func:`explain` would say."""
    return _classify(exc)[0]


def _classify(exc: BaseException) -> tuple[str, BaseException]:
    found: dict[str, BaseException] = {}
    for item in _chain(exc):
        name, text = type(item).__name__, str(item)
        if name in _NOPERM_TYPES or text.startswith("NOPERM") or _is_denial(text):
            found.setdefault("noperm", item)
        elif name in _AUTH_TYPES or _AUTH.search(text):
            found.setdefault("auth", item)
        elif isinstance(item, ssl.SSLError) and "CERTIFICATE" in text.upper():
            found.setdefault("tls", item)  # SSLCertVerificationError among them
    for key in ("auth", "noperm", "tls"):
        if key in found:
            return key, found[key]
    return "unreachable", exc


_NO_MASTER = re.compile(r"No master found for '[^']*'")  # redis-py's MasterNotFoundError


def _is_denial(text: str) -> bool:
    return bool(_NOPERM_COMMAND.search(text) or _SCRIPT_DENIED.search(text))


def _leaf_text(exc: BaseException) -> str:
    """The most specific message: the first non-group member of a group, else the exception."""
    exc = _leaf(exc)
    text = str(exc) or type(exc).__name__
    found = _NO_MASTER.match(text)
    if found:
        # redis-py appends the repr of each sentinel client it tried (its whole pool).
        return f"{found.group(0)}: no sentinel answered, or none knows that master"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def explain(exc: BaseException, url: str) -> str:
    """One line saying why ``url`` could not be used; never shows the URL's password."""
    what, item = _classify(exc)
    shown = redact_url(url)
    if what == "auth":
        text = f"authentication failed for user {user_of(url)!r} at {shown}: {item}"
    elif what == "noperm":
        text = f"permission denied: {describe_denial(str(item), user_of(url))}"
    elif what == "tls":
        reason = getattr(item, "verify_message", None) or getattr(item, "reason", None) or item
        text = f"TLS certificate problem with {shown}: {reason}"
    elif _is_refusal(exc):
        text = f"Redis at {shown} refused the call: {_leaf_text(exc)}"
        advice = _advice(exc)
        if advice:
            text = f"{text} ({advice})"
    else:
        text = f"cannot reach Redis at {shown}: {_leaf_text(exc)}"
    return scrub(text, url)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _is_refusal(exc: BaseException) -> bool:
    """An error reply (OOM, MISCONF...): Redis was reached, and said no."""
    from rrq_flow.redis_errors import is_error_reply

    return is_error_reply(_leaf(exc))


def _advice(exc: BaseException) -> str | None:
    from rrq_flow.redis_errors import ADVICE, error_code

    return ADVICE.get(error_code(_leaf(exc)))


def describe_denial(message: str, user: str) -> str:
    """``user U lacks COMMAND`` from a NOPERM reply (or the closest we can say)."""
    match = _NOPERM_COMMAND.search(message)
    if match:
        return f"user {user!r} lacks {match.group(1).upper()}"
    if _NOPERM_KEY.search(message):
        return f"user {user!r} lacks access to a key of this pipeline ({message.strip()})"
    if _NOPERM_CHANNEL.search(message):
        return f"user {user!r} lacks access to a channel ({message.strip()})"
    return f"user {user!r} lacks a command a script needs ({message.strip()})"


def is_access_error(exc: BaseException) -> bool:
    """True for authentication and permission failures (which waiting will not fix)."""
    return kind(exc) in ("auth", "noperm")

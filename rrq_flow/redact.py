"""Keep secrets out of what rrq-flow shows: the one way a Redis URL is printed.

Every message, log line and output that names a Redis URL shows it through :func:`redact_url`
(``redis://user:***@host:6379/0``); :func:`scrub` removes a known secret from text that came
from elsewhere (a library's error message, a URL the user typed wrong).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://[userinfo@]rest — userinfo is everything up to the last "@" before the path.
_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*@)?(?P<rest>.*)$", re.S
)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; the user name is kept.

    Works on malformed URLs too (a bad port, stray characters): only the part between
    ``scheme://`` and the last ``@`` before the path can hold a password, and that is masked.
    Text that is not a URL is returned as it is.
    """
    match = _URL.match(url)
    if match is None or match.group("userinfo") is None:
        return url
    userinfo = match.group("userinfo")[:-1]
    user, sep, _password = userinfo.partition(":")
    shown = f"{user}:{MASK}" if sep else (MASK if _looks_like_password_only(url) else user)
    return f"{match.group('scheme')}{shown}@{match.group('rest')}"


def _looks_like_password_only(url: str) -> bool:
    # redis://secret@host is how some tools spell a password without a user; redis-py reads the
    # lone userinfo as a user name, but it is safer to hide it than to print a password.
    return url.lower().startswith(("redis://", "rediss://", "unix://"))


def url_secrets(url: str) -> list[str]:
    """The password of ``url``, raw and unquoted, for :func:`scrub` (none below 3 characters:
    masking every "a" of a message would hide the message, not a secret)."""
    match = _URL.match(url)
    if match is None or match.group("userinfo") is None:
        return []
    _user, sep, password = match.group("userinfo")[:-1].partition(":")
    candidates = {password, unquote(password)} if sep else set()
    return sorted((c for c in candidates if len(c) >= 3), key=len, reverse=True)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with every URL of ``urls`` shown redacted and their passwords masked."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url))
        for secret in url_secrets(url):
            text = text.replace(secret, MASK)
    return text

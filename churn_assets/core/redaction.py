"""Credentials out of text: URLs in descriptions, metadata, log lines and alerts.

``redact`` masks ``scheme://user:password@host`` (to ``scheme://user:***@host``), a bare
``scheme://token@host``, and the values of secret-looking query parameters
(``token=``, ``password=``, ``api_key=`` ...). It works on any text, not only on a
lone URL, because the URL usually arrives inside an error message. It lives in core
because every layer that writes text a user may see (settings errors, sources, Dagster
metadata and alerts) needs the same rule.
"""

from __future__ import annotations

import re

# user:password@ in the authority part of a URL (the password may hold any character
# but "@", whitespace, "/" and quotes; percent-escapes included).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s'\"<>]*):"
                       r"(?P<secret>[^@/\s'\"<>]+)@")
# A lone token as userinfo (https://ghp_xxx@host): there is no way to tell a user name
# from a token, so it is masked too.
_TOKEN_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<secret>[^:@/\s'\"<>]+)@")
SECRET_PARAMS = ("token", "access_token", "api_key", "apikey", "key", "password", "passwd",
                 "pwd", "secret", "client_secret", "auth", "signature", "sig")
_QUERY = re.compile(r"(?P<name>(?<![A-Za-z0-9_])(?:" + "|".join(SECRET_PARAMS)
                    + r"))=(?P<value>[^&\s'\"<>#]+)", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with every URL credential and secret query value replaced by ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _TOKEN_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['name']}={MASK}", text)


def has_credentials(url: str) -> bool:
    """True when ``url`` carries a password (or token) in its userinfo part."""
    return bool(_USERINFO.search(url) or _TOKEN_USERINFO.search(url))

"""How the data directory may be spelled: a local path or an ``s3://bucket/prefix`` URL.

Settings check it when they load (a typo fails before anything runs) and storage checks
it when it opens a location (a path handed over in code); the two layers may import only
core, so the rule is written once, here.
"""

from __future__ import annotations

import re

SUPPORTED_SCHEMES = ("s3",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# S3's bucket naming rules (3-63 lower-case letters, digits, dots, hyphens), then a key prefix.
_S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?")


def url_scheme(text: str) -> str | None:
    """``"s3"`` for ``"s3://bucket/x"`` (lower-cased), None for a local path."""
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def check_home_url(text: str) -> None:
    """Raise ValueError naming ``text`` if it is a URL the data directory cannot live at."""
    scheme = url_scheme(text)
    if scheme is not None and scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"{text!r}: the data directory must be a local path or an"
                         f" {' / '.join(s + '://' for s in SUPPORTED_SCHEMES)} URL, not {scheme}://")
    if scheme == "s3" and not _S3_URL.fullmatch(text):
        raise ValueError(f"{text!r}: not an s3://bucket/prefix URL (bucket names are 3-63"
                         " lower-case letters, digits, dots and hyphens)")

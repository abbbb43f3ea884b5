"""Where the data directory lives: a local folder (the default) or an ``s3://`` URL.

A local home stays a plain ``pathlib.Path``, so every local code path (temp file +
rename, fsync, 0600/0700 modes, fcntl locks, symlink refusal) is exactly what it was.
An ``s3://bucket/prefix`` home becomes a ``upath.UPath`` over s3fs; the code that
writes through it relies on what object storage does guarantee:

- one PUT is atomic: a reader sees the whole old object or the whole new one, never
  half, so "replace a file atomically" is a single PUT (``put_bytes``);
- a conditional PUT (``If-None-Match: *``) creates an object only if it is absent
  (``create_bytes``): the registry claims a version number with it;
- a conditional PUT (``If-Match: <etag>``) replaces an object only if nobody changed
  it since it was read (``append_bytes``): appends to JSONL logs never lose a line.

There is no rename, no fsync and no advisory lock. The endpoint and the credentials come
from the standard AWS settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...,
``~/.aws``), never from the project's settings file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from churn_assets.core.home_url import check_home_url, url_scheme

# A conditional append that keeps losing the race is a bug or a storm of writers; give up
# loudly instead of spinning.
APPEND_ATTEMPTS = 20


class StorageLocationError(OSError):
    """The data directory's URL is unsupported or its storage cannot be reached."""


def scheme_of(value) -> str | None:
    """``"s3"`` for ``"s3://bucket/x"``, None for a local path."""
    if isinstance(value, PurePath):
        return None
    if not isinstance(value, str):
        return getattr(value, "protocol", None) or None
    return url_scheme(value)


def is_remote(path) -> bool:
    """True for an object-storage location (a UPath that is not a local path)."""
    return not isinstance(path, (PurePath, str)) and scheme_of(path) is not None


def storage_options() -> dict:
    """s3fs options from the standard AWS environment.

    The endpoint is passed explicitly so that fsspec's per-process filesystem cache is
    keyed by it (a changed ``AWS_ENDPOINT_URL`` gets a new client). Listings are not
    cached: other processes write the same keys (a worker registers, the server polls).
    """
    options: dict = {"use_listings_cache": False,
                     "config_kwargs": {"connect_timeout": 5, "read_timeout": 30,
                                       "retries": {"max_attempts": 3, "mode": "standard"}}}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def location(value: str | os.PathLike):
    """The data-directory path object for ``value``: ``Path`` locally, ``UPath`` for s3://."""
    if is_remote(value):
        value = url(value)  # rebuilt, so a UPath made without these options gets them
    if isinstance(value, PurePath):
        return Path(value).expanduser()
    text = os.fspath(value)
    if scheme_of(text) is None:
        return Path(text).expanduser()
    check_home_url(text)
    from upath import UPath

    return UPath(text.rstrip("/"), **storage_options())


def url(path) -> str:
    """The location as a user would type it (``s3://bucket/key`` or a local path)."""
    return str(path)


def _key(path) -> str:
    return path.path  # "bucket/key", what s3fs calls take


def _named(path, exc: BaseException) -> StorageLocationError:
    detail = str(exc) or type(exc).__name__
    return StorageLocationError(f"{url(path)}: {detail}")


def put_bytes(path, payload: bytes) -> None:
    """Replace the object at ``path`` with one PUT (readers see old or new, never half)."""
    try:
        path.fs.pipe_file(_key(path), payload)
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise _named(path, exc) from exc


def create_bytes(path, payload: bytes) -> bool:
    """Create the object at ``path`` only if absent (``If-None-Match: *``); False if it exists."""
    try:
        path.fs.pipe_file(_key(path), payload, mode="create")
    except FileExistsError:
        return False
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise _named(path, exc) from exc
    return True


def read_bytes(path, limit: int | None = None) -> bytes | None:
    """The object's bytes (at most ``limit + 1`` of them), None if it does not exist."""
    try:
        if limit is None:
            return path.fs.cat_file(_key(path))
        return path.fs.cat_file(_key(path), start=0, end=limit + 1)
    except FileNotFoundError:
        return None
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise _named(path, exc) from exc


def etag(path) -> str | None:
    """The object's ETag (changes with every PUT), None if it does not exist."""
    try:
        return path.fs.info(_key(path)).get("ETag")
    except FileNotFoundError:
        return None
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise _named(path, exc) from exc


def append_bytes(path, data: bytes) -> None:
    """Append ``data`` to the object at ``path``: read, add, conditional PUT, retried.

    S3 has no append; a read-modify-write could lose a concurrent writer's line, so the
    PUT carries ``If-Match`` with the ETag that was read (or ``If-None-Match: *`` for a
    new object) and is redone on the new content when someone else wrote in between.
    A torn last line cannot exist (a PUT is whole), but a hand-edited one might: it is
    ended with a newline first, so the new line is not glued onto it.
    """
    fs, key = path.fs, _key(path)
    for _ in range(APPEND_ATTEMPTS):
        try:
            info = fs.info(key)
        except FileNotFoundError:
            if create_bytes(path, data):
                return
            continue  # created meanwhile: append to it
        except Exception as exc:
            raise _named(path, exc) from exc
        old = read_bytes(path) or b""
        sep = b"\n" if old and not old.endswith(b"\n") else b""
        try:
            fs.pipe_file(key, old + sep + data, IfMatch=info["ETag"])
            return
        except Exception as exc:  # s3fs reports a failed If-Match as EINVAL with S3's text
            if "pre-condition" not in str(exc).lower() and "precondition" not in str(exc).lower():
                raise _named(path, exc) from exc
    raise StorageLocationError(f"{url(path)}: {APPEND_ATTEMPTS} conditional appends in a row lost"
                               " to concurrent writers; giving up")


def check_reachable(root) -> None:
    """Fail with one line naming the URL if the bucket of ``root`` is missing or its
    endpoint unreachable; called before a run writes anything."""
    bucket = _key(root).split("/", 1)[0]
    endpoint = storage_options().get("endpoint_url", "the default AWS endpoint")
    # HeadBucket, not fs.exists: exists() answers False for an unreachable endpoint too.
    try:
        root.fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StorageLocationError(f"{url(root)}: bucket {bucket!r} does not exist at {endpoint};"
                                   " create it first") from None
    except PermissionError as exc:
        raise StorageLocationError(f"{url(root)}: access to bucket {bucket!r} at {endpoint} is"
                                   f" denied ({exc}); check the AWS credentials") from None
    except Exception as exc:  # botocore/aiohttp connection errors are not OSErrors
        raise StorageLocationError(f"{url(root)}: object storage at {endpoint} cannot be reached"
                                   f" ({type(exc).__name__}: {exc})") from None

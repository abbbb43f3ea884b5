"""The registry's errors and its bounded, one-line-error reads of JSON files.

Shared by the local registry (registry.py) and the object-storage one
(object_registry.py): every damaged file is reported as one line naming the file,
what is wrong with it and how to repair it, never as a stack trace.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from churn_assets.storage import location

# Models pickled before the package was split into layers name the old flat modules;
# they load through these aliases, so an upgrade never strands the production model.
LEGACY_MODULES = {"churn_assets.artifact": "churn_assets.core.artifact",
                  "churn_assets.features": "churn_assets.core.features",
                  "churn_assets.spec": "churn_assets.core.spec",
                  "churn_assets.training": "churn_assets.core.training",
                  "churn_assets.metrics": "churn_assets.core.metrics"}


@contextmanager
def _legacy_module_names():
    import importlib
    import sys

    added = [old for old in LEGACY_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(LEGACY_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why."""


class IntegrityError(RegistryError):
    """A model file does not match the sha256 recorded when it was registered."""


class UnknownVersionError(RegistryError):
    """No version of that name (which includes names that could never be versions)."""


class _PathError(RegistryError):
    def __init__(self, path: Path, reason: str, hint: str = "") -> None:
        self.path, self.reason = (path if location.is_remote(path) else Path(path)), reason
        super().__init__(f"{path}: {reason}" + (f"; {hint}" if hint else ""))


class CorruptFileError(_PathError):
    """A registry file (a manifest, the production pointer) cannot be read or parsed."""


class UnsafePathError(_PathError):
    """A symlink leaving the registry, or one the registry would have to write through."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _shown(value, limit: int = 40) -> str:
    """repr() cut short: a 10,000-character name must not become a 10,000-character error."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _read_json_object(path: Path, limit: int, hint: str = "") -> dict:
    """A JSON object from ``path``, or a one-line CorruptFileError naming the file and why."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise CorruptFileError(path, "is missing", hint) from None
    except OSError as exc:
        raise CorruptFileError(path, f"cannot be read ({exc.strerror or exc})", hint) from None
    return _parse_json_object(path, raw, limit, hint)


def _parse_json_object(path, raw: bytes, limit: int, hint: str = "") -> dict:
    if len(raw) > limit:
        raise CorruptFileError(path, f"is larger than {limit} bytes, so the registry did not write it", hint)
    if not raw.strip():
        raise CorruptFileError(path, "is empty", hint)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptFileError(path, f"is not valid JSON ({exc})", hint) from None
    if not isinstance(data, dict):
        raise CorruptFileError(path, f"holds a JSON {type(data).__name__}, not an object", hint)
    return data

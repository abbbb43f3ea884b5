"""A versioned model registry on the local filesystem.

Layout under the registry root::

    versions/v0001/model.joblib     the ChurnPredictor
    versions/v0001/manifest.json    sha256, metrics, spec, data window, code version, ...
    production.json                 the production pointer {"version", "sha256", ...}
    events.jsonl                    every promotion and rollback, appended

A version folder is written under a temporary name and renamed into place, and the
pointer is replaced with write-then-rename, so a crash never leaves a half-written
version or pointer. Earlier versions are never deleted.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import joblib

from churn_assets.storage.atomic import atomic_write_json

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
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


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    manifest: dict

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def artifact_path(self) -> Path:
        return self.path / "model.joblib"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ModelRegistry:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "production.json"
        self.events_path = self.root / "events.jsonl"

    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def versions(self) -> list[ModelVersion]:
        """All registered versions, oldest first."""
        if not self.versions_dir.exists():
            return []
        found = []
        for path in self.versions_dir.iterdir():
            if VERSION_PATTERN.match(path.name) and (path / "manifest.json").exists():
                found.append(ModelVersion(path.name, path, json.loads((path / "manifest.json").read_text())))
        return sorted(found, key=lambda v: int(v.version[1:]))

    def get(self, version: str) -> ModelVersion:
        path = self.versions_dir / version
        if not VERSION_PATTERN.match(version) or not (path / "manifest.json").exists():
            known = [v.version for v in self.versions()]
            raise RegistryError(f"no model version {version!r} in {self.root}; known: {known}")
        return ModelVersion(version, path, json.loads((path / "manifest.json").read_text()))

    def production_pointer(self) -> dict | None:
        if not self.pointer_path.exists():
            return None
        return json.loads(self.pointer_path.read_text())

    def production(self) -> ModelVersion | None:
        pointer = self.production_pointer()
        return None if pointer is None else self.get(pointer["version"])

    def load(self, version: ModelVersion):
        """Unpickle a version's model after checking its sha256 (unpickling runs code).

        The bytes that are hashed are the bytes that are unpickled, so the file cannot be
        swapped between the check and the load.
        """
        try:
            payload = version.artifact_path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{version.version}: {version.artifact_path} is missing") from None
        actual = hashlib.sha256(payload).hexdigest()
        if actual != version.sha256:
            raise IntegrityError(
                f"{version.version}: model.joblib ({len(payload)} bytes) has sha256 {actual[:12]}…,"
                f" which does not match the registered {version.sha256[:12]}… (truncated or"
                " altered); refusing to load it")
        with _legacy_module_names():
            return joblib.load(io.BytesIO(payload))

    def register(self, predictor, manifest: dict) -> ModelVersion:
        """Store ``predictor`` as the next version (not yet in production)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{os.getpid()}-{dt.datetime.now().timestamp():.0f}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            joblib.dump(predictor, staging / "model.joblib")
            with open(staging / "model.joblib", "rb+") as fh:
                os.fsync(fh.fileno())
            with self._lock():
                existing = [int(v.version[1:]) for v in self.versions()]
                version = f"v{(max(existing) + 1 if existing else 1):04d}"
                body = dict(manifest, version=version, sha256=file_sha256(staging / "model.joblib"),
                            registered_at=_now())
                atomic_write_json(staging / "manifest.json", body)
                os.rename(staging, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(version)

    def promote(self, version: str, reason: str, run_id: str | None = None) -> dict:
        """Point production at ``version`` atomically and log the event."""
        target = self.get(version)
        if not target.artifact_path.exists() or file_sha256(target.artifact_path) != target.sha256:
            raise IntegrityError(f"{version}: model.joblib is missing or altered; not promoting it")
        with self._lock():
            previous = self.production_pointer()
            pointer = {"version": version, "sha256": target.sha256, "promoted_at": _now(),
                       "previous": previous["version"] if previous else None,
                       "reason": reason, "run_id": run_id}
            atomic_write_json(self.pointer_path, pointer)
            with open(self.events_path, "a") as fh:
                fh.write(json.dumps({"event": "promote", **pointer}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return pointer

    def rollback(self, to: str | None = None) -> dict:
        """Move production back to ``to``, or by default to the newest version older than it."""
        current = self.production_pointer()
        if current is None:
            raise RegistryError("nothing is in production yet; there is nothing to roll back")
        if to is None:
            older = [v.version for v in self.versions() if int(v.version[1:]) < int(current["version"][1:])]
            if not older:
                raise RegistryError(f"{current['version']} is the oldest version; nothing to roll back to")
            to = older[-1]
        if to == current["version"]:
            raise RegistryError(f"{to} is already in production")
        return self.promote(to, reason=f"rollback from {current['version']}")

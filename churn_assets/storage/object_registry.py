"""The model registry on object storage (``s3://bucket/prefix/registry``).

Same layout, same manifests, same sha256 checks as the local registry (registry.py);
what differs is how each write is made safe without rename, fsync or flock:

- **Version numbers** are claimed with a conditional PUT of ``versions/vNNNN/.claim``
  (``If-None-Match: *``): of two writers asking for the same number, exactly one gets
  it and the other takes the next. This replaces the local ``flock`` around numbering.
- **A version becomes visible when its manifest exists.** The artifact is PUT first,
  then the manifest that records its sha256; a reader that finds a manifest finds the
  whole artifact it names. A writer that dies in between leaves a claimed folder with
  no manifest: reported by ``problems()`` and skipped, its number never handed out again.
- **Promotion and rollback are one PUT of ``production.json``** (about 300 bytes):
  a reader sees the old pointer or the new one, never half. Two concurrent promotions
  both succeed and the last PUT wins; the run queue admits one refresh at a time.
- **events.jsonl** is appended with a conditional PUT (``If-Match`` on the ETag read),
  retried on conflict, so concurrent appends never lose a line.
- **Loading** reads the artifact's bytes once, hashes them and unpickles the same bytes,
  exactly as locally: a tampered object is refused before any code in it runs.

There are no symlinks and no file modes on object storage: who may read or replace the
pickles is the bucket's access policy (docs/deploy.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import joblib

from churn_assets.storage import location
from churn_assets.storage.registry import (
    CorruptFileError,
    IntegrityError,
    ModelRegistry,
    ModelVersion,
    _now,
    _parse_json_object,
    promotion_records,
)

CLAIM_FILE = ".claim"


def open_registry(root: str | os.PathLike) -> ModelRegistry:
    """The registry at ``root``: on object storage for an ``s3://`` URL, else local.

    Callers (CLI, server, assets) open either kind through this one function, so the
    local registry needs no knowledge of the object-storage one."""
    if location.scheme_of(root) is not None:
        return ObjectModelRegistry(root)
    return ModelRegistry(root)


class ObjectModelRegistry(ModelRegistry):
    """``ModelRegistry`` whose root is an object-storage URL; see the module docstring."""

    def __init__(self, root: str | os.PathLike) -> None:
        # location() rebuilds a UPath made elsewhere (the settings' home) with the endpoint
        # options of storage/location.py.
        self.root = location.location(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "production.json"
        self.events_path = self.root / "events.jsonl"

    # -- hooks of the shared reading code ---------------------------------------------------
    def _inside(self, path, what: str) -> None:
        return None  # no symlinks on object storage: a key is exactly where it says

    def _refuse_symlink(self, path, what: str) -> None:
        return None

    def _prepare(self) -> None:
        return None  # no folders to create

    def _lexists(self, path) -> bool:
        try:
            return path.exists()
        except (OSError, ValueError) as exc:
            raise location.StorageLocationError(f"{location.url(path)}: {exc}") from exc

    def _read_json(self, path, limit: int, hint: str = "") -> dict:
        try:
            raw = location.read_bytes(path, limit)
        except location.StorageLocationError as exc:
            raise CorruptFileError(path, f"cannot be read ({exc})", hint) from None
        if raw is None:
            raise CorruptFileError(path, "is missing", hint)
        return _parse_json_object(path, raw, limit, hint)

    def _entry_names(self) -> list[str]:
        return [p.name for p in self.versions_dir.iterdir()]

    # -- writing ------------------------------------------------------------------------------
    def register(self, predictor, manifest: dict) -> ModelVersion:
        """Store ``predictor`` as the next version (not yet in production)."""
        buf = io.BytesIO()
        joblib.dump(predictor, buf)
        payload = buf.getvalue()
        number = self._scan()[2] + 1
        while True:
            version = f"v{number:04d}"
            folder = self.versions_dir / version
            claim = json.dumps({"claimed_at": _now(), "pid": os.getpid()}).encode()
            if location.create_bytes(folder / CLAIM_FILE, claim):
                break
            number += 1  # another writer holds this number: take the next
        # Artifact first, manifest last: a manifest never names bytes that are not there.
        location.put_bytes(folder / "model.joblib", payload)
        body = dict(manifest, version=version, sha256=hashlib.sha256(payload).hexdigest(),
                    registered_at=_now())
        location.put_bytes(folder / "manifest.json",
                           json.dumps(body, indent=2, sort_keys=True, default=str).encode())
        return self.get(version)

    def promote(self, version: str, reason: str, run_id: str | None = None) -> dict:
        """Point production at ``version`` with one PUT, then log the event."""
        target = self.get(version)
        payload = location.read_bytes(target.artifact_path)
        if payload is None or hashlib.sha256(payload).hexdigest() != target.sha256:
            raise IntegrityError(f"{version}: model.joblib is missing or altered; not promoting it")
        previous, note = self._previous_version()
        pointer, event = promotion_records(target, previous, note, reason, run_id)
        location.put_bytes(self.pointer_path, json.dumps(pointer, indent=2, sort_keys=True).encode())
        location.append_bytes(self.events_path, (json.dumps(event) + "\n").encode())
        return pointer

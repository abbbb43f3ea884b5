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
- **Promotion, rollback and unpin are one PUT of ``production.json``** (about 300
  bytes): a reader sees the old pointer or the new one, never half. The PUT is
  conditional on the ETag the pointer was read with, so a refresh that read it before
  the operator pinned a version cannot overwrite the pin; two promotions both succeed,
  one after the other, and the later wins.
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
from churn_assets.storage.registry import ModelRegistry, ModelVersion
from churn_assets.storage.registry_files import CorruptFileError, IntegrityError, _now, _parse_json_object

CLAIM_FILE = ".claim"
POINTER_ATTEMPTS = 20


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

    def _check_artifact(self, target: ModelVersion) -> None:
        payload = location.read_bytes(target.artifact_path)
        if payload is None or hashlib.sha256(payload).hexdigest() != target.sha256:
            raise IntegrityError(f"{target.version}: model.joblib is missing or altered; not promoting it")

    def _read_bytes(self, path) -> bytes | None:
        return location.read_bytes(path)

    def _update_pointer(self, change) -> dict:
        """One conditional PUT of the pointer (``If-Match`` the ETag it was read with,
        ``If-None-Match: *`` if there was none), redone on the new pointer if another
        writer replaced it meanwhile: a pin ``change`` read cannot be overwritten by a
        refresh that read the pointer before the pin. Then the event is appended."""
        for _ in range(POINTER_ATTEMPTS):
            tag = location.etag(self.pointer_path)  # before the read: a newer body fails the PUT
            current, note = self._current_pointer()
            pointer, event = change(current, note)
            payload = json.dumps(pointer, indent=2, sort_keys=True).encode()
            if _put_if_unchanged(self.pointer_path, payload, tag):
                location.append_bytes(self.events_path, (json.dumps(event) + "\n").encode())
                return pointer
        raise location.StorageLocationError(f"{location.url(self.pointer_path)}: {POINTER_ATTEMPTS}"
                                            " conditional writes in a row lost to concurrent writers")


def _put_if_unchanged(path, payload: bytes, tag: str | None) -> bool:
    """PUT ``payload`` only if the object still has ETag ``tag`` (absent for None); False
    if someone else wrote it first."""
    if tag is None:
        return location.create_bytes(path, payload)
    try:
        path.fs.pipe_file(path.path, payload, IfMatch=tag)
    except Exception as exc:  # s3fs reports a failed If-Match as EINVAL with S3's text
        text = str(exc).lower()
        if "pre-condition" in text or "precondition" in text:
            return False
        raise location.StorageLocationError(f"{location.url(path)}: {exc}") from exc
    return True

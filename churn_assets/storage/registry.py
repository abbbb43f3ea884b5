"""A versioned model registry on the local filesystem.

Layout under the registry root::

    versions/v0001/model.joblib     the ChurnPredictor
    versions/v0001/manifest.json    sha256, metrics, spec, data window, code version, ...
    production.json                 the production pointer {"version", "sha256", ...}, and the
                                    operator's pin when a version was chosen by hand (pointer.py)
    events.jsonl                    every promotion, rollback and unpin, appended

A version folder is written under a temporary name and renamed into place, and the
pointer is replaced with write-then-rename, so a crash never leaves a half-written
version or pointer; leftovers of a killed writer are swept on the next write. Earlier
versions are never deleted.

Damage stays local: an unreadable old version is skipped (and reported by
``problems()``) without blocking new registrations, and an unreadable production pointer
is repaired by promoting or rolling back to a named version, which never needs to read
the old pointer. Nothing is read or written through a symlink that leaves the registry,
and everything is private to the owner (0700/0600).

``open_registry("s3://bucket/prefix/registry")`` opens the same layout on object storage
(storage/object_registry.py); the reading code here is shared through small hooks.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import joblib

from churn_assets.storage.registry_files import (  # noqa: F401 - the registry's public errors
    CorruptFileError,
    IntegrityError,
    RegistryError,
    UnknownVersionError,
    UnsafePathError,
    _legacy_module_names,
    _now,
    _read_json_object,
    _shown,
    file_sha256,
)
from churn_assets.storage.pointer import PinnedError, pin_of, promotion_records, unpin_records
from churn_assets.storage.atomic import (
    append_line,
    atomic_write_json,
    clean_stale_temporaries,
    create_private_file,
    fsync_dir,
    private_mkdir,
)

# Bounded, so a 10,000-digit name is "no such version" rather than an OSError (name too
# long) or a ValueError (int() of > 4300 digits). Match with fullmatch: "$" would accept
# a trailing newline.
VERSION_PATTERN = re.compile(r"v(\d{4,9})")
MAX_MANIFEST_BYTES = 16 << 20
MAX_POINTER_BYTES = 1 << 20
REPAIR_HINT = ("run `churn-assets versions` to list the versions, then"
               " `churn-assets rollback --to vNNNN` to point production at one")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
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


class ModelRegistry:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "production.json"
        self.events_path = self.root / "events.jsonl"

    # -- path safety ---------------------------------------------------------------------
    def _inside(self, path: Path, what: str) -> None:
        """Refuse ``path`` if it resolves outside the registry: a symlink planted there
        would make the registry list, verify and unpickle a file from anywhere."""
        try:
            root, target = self.root.resolve(), path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise UnsafePathError(path, f"{what} cannot be resolved ({exc})") from None
        if target != root and not target.is_relative_to(root):
            raise UnsafePathError(path, f"{what} resolves to {target}, outside the registry {root};"
                                        " refusing to use it")

    def _refuse_symlink(self, path: Path, what: str) -> None:
        if path.is_symlink():
            raise UnsafePathError(path, f"{what} is a symlink (to {os.readlink(path)}); the registry"
                                        " never makes one and will not read or write through it;"
                                        f" remove it, then {REPAIR_HINT}")

    def _open_private(self, path: Path, flags: int) -> int:
        """os.open without following a symlink at ``path``; new files are 0600."""
        try:
            fd = os.open(path, flags | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(path, "is a symlink; the registry will not write through it;"
                                            " remove it and retry") from None
            raise
        try:
            os.fchmod(fd, 0o600)  # a file from before files were kept private
        except PermissionError:
            pass  # not ours to change; writing to it still works
        return fd

    def _prepare(self) -> None:
        private_mkdir(self.root, tighten=True)
        self._inside(self.versions_dir, "versions/")
        private_mkdir(self.versions_dir, tighten=True)

    @contextmanager
    def _lock(self):
        private_mkdir(self.root, tighten=True)
        fd = self._open_private(self.root / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- storage hooks (overridden for object storage) -----------------------------------
    def _lexists(self, path) -> bool:
        return os.path.lexists(path)

    def _read_json(self, path, limit: int, hint: str = "") -> dict:
        return _read_json_object(path, limit, hint)

    def _entry_names(self) -> list[str]:
        with os.scandir(self.versions_dir) as entries:
            return [entry.name for entry in entries]

    # -- reading ---------------------------------------------------------------------------
    def _read_version(self, name: str) -> ModelVersion:
        path = self.versions_dir / name
        self._inside(path, f"version folder {name}")
        manifest_path = path / "manifest.json"
        self._inside(manifest_path, f"{name}/manifest.json")
        self._inside(path / "model.joblib", f"{name}/model.joblib")
        manifest = self._read_json(manifest_path, MAX_MANIFEST_BYTES,
                                   f"version {name} cannot be used; other versions are unaffected")
        sha = manifest.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise CorruptFileError(manifest_path, f"has no valid 'sha256' ({_shown(sha)}), so {name}'s"
                                                  " model cannot be verified; version skipped")
        return ModelVersion(name, path, manifest)

    def _scan(self) -> tuple[list[ModelVersion], list[RegistryError], int]:
        """(readable versions oldest first, one error per damaged version, highest number used)."""
        if not self._lexists(self.versions_dir):
            return [], [], 0
        try:
            self._inside(self.versions_dir, "versions/")
        except UnsafePathError as exc:  # reported, not listed; register() refuses it
            return [], [exc], 0
        good, problems, highest = [], [], 0
        for name in self._entry_names():
            match = VERSION_PATTERN.fullmatch(name)
            if match is None:
                continue
            # Damaged versions count too: their number is never handed out again.
            highest = max(highest, int(match.group(1)))
            try:
                good.append(self._read_version(name))
            except RegistryError as exc:
                problems.append(exc)
        good.sort(key=lambda v: int(v.version[1:]))
        problems.sort(key=str)
        return good, problems, highest

    def versions(self) -> list[ModelVersion]:
        """All readable versions, oldest first; damaged ones are skipped (see ``problems()``)."""
        return self._scan()[0]

    def next_version(self) -> str:
        """The name ``register`` would give a version now ("v0004"); damaged folders count,
        as their numbers are never handed out again. Another registration may take it first."""
        return f"v{self._scan()[2] + 1:04d}"

    def problems(self) -> list[RegistryError]:
        """Why anything is unreadable: one error per damaged version folder, plus one for a
        production pointer that is unreadable or names no readable version. Each message is
        one line naming the file. Empty for a healthy registry."""
        problems = self._scan()[1]
        try:
            self.production()
        except RegistryError as exc:
            if str(exc) not in map(str, problems):
                problems.append(exc)
        return problems

    def get(self, version: str) -> ModelVersion:
        """The version named ``version``: UnknownVersionError if there is none, CorruptFileError
        or UnsafePathError if its folder is damaged or leaves the registry."""
        if (isinstance(version, str) and VERSION_PATTERN.fullmatch(version)
                and self._lexists(self.versions_dir / version)):
            return self._read_version(version)
        known = [v.version for v in self.versions()]
        raise UnknownVersionError(f"no model version {_shown(version)} in {self.root}; known: {known}")

    def production_pointer(self) -> dict | None:
        """The pointer, None before the first promotion; an unreadable pointer raises a
        CorruptFileError naming production.json and how to repair it."""
        path = self.pointer_path
        self._refuse_symlink(path, "production.json")
        if not self._lexists(path):
            return None
        pointer = self._read_json(path, MAX_POINTER_BYTES, REPAIR_HINT)
        version = pointer.get("version")
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            raise CorruptFileError(path, f"names no version ('version' is {_shown(version)})", REPAIR_HINT)
        return pointer

    def production(self) -> ModelVersion | None:
        pointer = self.production_pointer()
        return None if pointer is None else self.get(pointer["version"])

    def load(self, version: ModelVersion):
        """Unpickle a version's model after checking its sha256 (unpickling runs code).

        The bytes that are hashed are the bytes that are unpickled, so the file cannot be
        swapped between the check and the load.
        """
        self._inside(version.artifact_path, f"{version.version}/model.joblib")
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

    # -- writing ---------------------------------------------------------------------------
    def register(self, predictor, manifest: dict) -> ModelVersion:
        """Store ``predictor`` as the next version (not yet in production)."""
        self._prepare()
        clean_stale_temporaries(self.versions_dir)
        # mkdtemp: a fresh 0700 folder whose name carries our PID for clean_stale_temporaries.
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=self.versions_dir))
        try:
            artifact = staging / "model.joblib"
            with create_private_file(artifact) as fh:
                joblib.dump(predictor, fh)
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock():
                version = f"v{self._scan()[2] + 1:04d}"
                body = dict(manifest, version=version, sha256=file_sha256(artifact), registered_at=_now())
                atomic_write_json(staging / "manifest.json", body)
                target = self.versions_dir / version
                if os.path.lexists(target):  # renaming onto an empty folder would succeed silently
                    raise RegistryError(f"{target} already exists; not registering over it")
                os.rename(staging, target)
                fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(version)

    def _current_pointer(self) -> tuple[dict | None, dict]:
        """The pointer as it is now, tolerating a damaged one: repairing it is what
        promote/rollback are for, so they must not need to read it. (pointer, note)."""
        try:
            return self.production_pointer(), {}
        except CorruptFileError as exc:
            return None, {"replaced_unreadable_pointer": exc.reason}

    def _update_pointer(self, change) -> dict:
        """Replace the pointer with ``change(current, note)`` -> (pointer, event) and log the
        event, under the registry lock: a pin read by ``change`` cannot move meanwhile."""
        with self._lock():
            clean_stale_temporaries(self.root)
            self._refuse_symlink(self.pointer_path, "production.json")
            current, note = self._current_pointer()
            pointer, event = change(current, note)
            # Opened before the pointer moves, so a refused events.jsonl changes nothing.
            events = self._open_private(self.events_path, os.O_RDWR | os.O_APPEND)
            try:
                atomic_write_json(self.pointer_path, pointer)
                append_line(events, json.dumps(event))
            finally:
                os.close(events)
        return pointer

    def _check_artifact(self, target: ModelVersion) -> None:
        if not target.artifact_path.exists() or file_sha256(target.artifact_path) != target.sha256:
            raise IntegrityError(f"{target.version}: model.joblib is missing or altered; not promoting it")

    def promote(self, version: str, reason: str, run_id: str | None = None, *,
                pinned_by: str | None = None, unless_pinned: bool = False) -> dict:
        """Point production at ``version`` atomically and log the event.

        ``pinned_by`` (who chose the version by hand) pins it: later ``unless_pinned``
        promotions, the refreshes', raise ``PinnedError`` until ``unpin``. The pin is
        checked and the pointer written under one lock (one conditional PUT on object
        storage), so an operator's rollback is never overwritten by a refresh that read
        the pointer a moment earlier.
        """
        target = self.get(version)
        self._check_artifact(target)

        def change(current, note):
            if unless_pinned and pin_of(current):
                raise PinnedError(current)
            previous = current["version"] if current else None
            return promotion_records(target, previous, note, reason, run_id, pinned_by)

        return self._update_pointer(change)

    def unpin(self, by: str) -> dict:
        """Let refreshes promote again: the pointer keeps its version and loses its pin."""
        def change(current, note):
            if current is None:
                raise RegistryError("nothing is in production yet; there is nothing to unpin")
            if not pin_of(current):
                raise RegistryError(f"production {current['version']} is not pinned")
            return unpin_records(current, by)

        # An unreadable pointer is an error here (unlike promote): unpinning must not guess.
        self.production_pointer()
        return self._update_pointer(change)

    def events(self) -> list[dict]:
        """events.jsonl, oldest first: promotions, rollbacks, unpins. Unreadable lines
        (a torn last line, a hand edit) are skipped: history is shown, never fatal."""
        try:
            raw = self._read_bytes(self.events_path)
        except (OSError, RegistryError):
            return []
        out = []
        for line in (raw or b"").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def _read_bytes(self, path) -> bytes | None:
        self._refuse_symlink(path, path.name)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def rollback(self, to: str | None = None, pinned_by: str | None = None) -> dict:
        """Move production back to ``to``, or by default to the newest version older than it.

        With ``to`` this also repairs a missing, empty or unreadable production pointer.
        ``pinned_by`` pins the version rolled back to (``promote``).
        """
        try:
            current = self.production_pointer()
        except CorruptFileError as exc:
            if to is None:
                raise CorruptFileError(exc.path, exc.reason, "the version to roll back from is unknown;"
                                       f" {REPAIR_HINT}") from None
            return self.promote(to, reason=f"repair: production.json {exc.reason}", pinned_by=pinned_by)
        if current is None:
            if to is None:
                raise RegistryError("nothing is in production yet; there is nothing to roll back")
            return self.promote(to, reason="repair: production.json was missing", pinned_by=pinned_by)
        if to is None:
            older = [v.version for v in self.versions() if int(v.version[1:]) < int(current["version"][1:])]
            if not older:
                raise RegistryError(f"{current['version']} is the oldest version; nothing to roll back to")
            to = older[-1]
        if to == current["version"]:
            raise RegistryError(f"{to} is already in production")
        return self.promote(to, reason=f"rollback from {current['version']}", pinned_by=pinned_by)

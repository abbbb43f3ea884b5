"""Crash-safe, private file writes: readers see the old file or the new one, never half of one.

Everything written here is private to the owner (files 0600, directories 0700) whatever
the umask: the data directory holds customer data and pickled models, and a pickle
anyone can replace is code anyone can run. Temporaries carry the writer's PID in their
name, so leftovers of a killed writer can be told apart from a write still in progress.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import BinaryIO

from churn_assets.storage import location

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# A temporary whose writer is still alive is left alone unless it is older than this:
# no write takes a day, so by then the PID has been reused by an unrelated process.
STALE_AFTER_SECONDS = 24 * 3600

# ".<name>.<pid>-<token>.tmp" (atomic_write_bytes; the token-less form is the old one)
# and ".staging-<pid>-<anything>" (the registry's half-built version folders).
_TEMP_FILE = re.compile(r"^\..+\.(\d{1,10})(?:-[0-9a-f]{8})?\.tmp$")
_STAGING = re.compile(r"^\.staging-(\d{1,10})-.*$")
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def private_mkdir(path: Path, *, tighten: bool = False) -> Path:
    """Create ``path`` and any missing parents as 0700 directories; return ``path``.

    Only directories this call creates are chmod-ed (undoing a umask that removed owner
    bits; a parent such as the user's home is not ours to change). ``tighten=True`` also makes
    an existing ``path`` 0700: for a directory that is ours, e.g. one made before files
    were kept private.

    On object storage there are no folders (a prefix exists once an object under it
    does) and no modes (access is the bucket's policy): nothing to do.
    """
    if location.is_remote(path):
        return path
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:  # made by a concurrent writer: fine, as long as it is a folder
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    if tighten and not missing:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
            os.chmod(path, PRIVATE_DIR_MODE)
    return path


def create_private_file(path: Path) -> BinaryIO:
    """Open a new file at ``path`` for writing, mode 0600, refusing to follow a symlink
    or to reuse an existing file (O_EXCL): a planted link cannot redirect the write."""
    fd = os.open(path, _CREATE_FLAGS, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have removed owner bits
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def temp_path_for(path: Path) -> Path:
    """The temporary name ``atomic_write_bytes`` uses next to ``path`` (dot-hidden, with PID)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` (mode 0600) so readers see the old or the new file.

    If anything fails (disk full, ``path`` is a directory, ...) the temporary file is
    removed and the old file is left as it was.

    On object storage the same guarantee is one PUT: no temporary, no rename.
    """
    if location.is_remote(path):
        location.put_bytes(path, payload)
        return
    path = Path(path)
    private_mkdir(path.parent)
    tmp = temp_path_for(path)
    fh = create_private_file(tmp)  # outside the try: if this fails, the name is not ours to remove
    try:
        with fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: say which one it was
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def clean_stale_temporaries(directory: Path, *, max_age_seconds: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove leftovers of killed writers in ``directory``; return what was removed.

    A temporary (``.<name>.<pid>[-<token>].tmp`` file or ``.staging-<pid>-*`` folder) goes
    if its PID is no longer running, or if it is older than ``max_age_seconds`` (the PID
    has been reused). Temporaries of live writers, including this process, are kept:
    their write may be in progress. Symlinks are removed, never followed.
    Object storage has no temporaries to leave behind (a PUT is whole or absent).
    """
    if location.is_remote(directory):
        return []
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_FILE.match(entry.name) or _STAGING.match(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # its writer finished (renamed it) or another cleaner got it
        pid = int(match.group(1))
        if _pid_alive(pid) and now - st.st_mtime < max_age_seconds:
            continue
        path = Path(entry.path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _unlink_quietly(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def append_line(fd: int, line: str) -> None:
    """Append ``line`` and a newline to the O_APPEND file ``fd`` (opened for reading too)
    and fsync it. If a crash mid-append left a partial last line, that line is ended
    first, so this one is not glued onto it and lost with it."""
    data = line.encode() + b"\n"
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (the entry lives in the folder).
    A PUT that returned is durable on object storage: nothing to do there."""
    if location.is_remote(directory):
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A data directory that cannot be used, said in one line: full, read-only, not ours,
or on object storage that cannot be reached.

Such a fault reaches the user in two shapes: a live exception in the ``churn-assets``
process (``fault_of``) or the text of a failed step in the run's event log
(``fault_in_text``). Both end here, in the same words, naming the path and what to do:
the traceback of a full disk says nothing the user can act on, and it is 150 lines
long. Only faults of the storage are recognised; anything else returns None, so a real
bug keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from churn_assets.storage import location

# SQLite reports a full disk, a read-only file and a forbidden one in its own words,
# without a path: they are diagnosed by looking at the data directory itself.
_SQLITE_FAULTS = ("disk i/o error", "database or disk is full", "attempt to write a readonly database",
                  "unable to open database file", "readonly database")
_ERRNO = re.compile(r"\[Errno (\d+)\][^'\n<]*(?:'([^']+)')?")
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DENIED = (errno.EACCES, errno.EPERM)


def _nearest(path: Path) -> tuple[Path, os.stat_result | None]:
    """The nearest part of ``path`` this process can stat, and its stat (None if none)."""
    probe = Path(path)
    while True:
        try:
            return probe, probe.stat()
        except OSError:  # missing, or inside a folder we may not enter
            if probe.parent == probe:
                return probe, None
            probe = probe.parent


def _owner(path: Path) -> str:
    """Who owns ``path``, or the nearest part of it this process can see."""
    seen, st = _nearest(path)
    if st is None:
        return f"{path} belongs to someone else"
    try:
        import pwd

        who = f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except (KeyError, ImportError):
        who = f"uid {st.st_uid}"
    return f"{seen} belongs to {who}"


def _me() -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    except (KeyError, ImportError):
        return f"uid {os.getuid()}"


def _line(code: int, path: str | None, home) -> str | None:
    """The one line for an OS error number on ``path`` (or, without one, on ``home``).
    The advice names the data directory only when the path is inside it (an input file
    the user named, or a full temporary folder, is not the data directory's fault)."""
    home_text = str(home).rstrip("/") if home is not None else None
    where = path or home_text or "the data directory"
    inside = home_text is not None and (where == home_text or where.startswith(home_text + "/"))
    under = home_text if inside else (os.path.dirname(where) or where)
    writing = f" (writing {where})" if where != under else ""
    if code in _NO_SPACE:
        move = " or set CHURN_ASSETS_HOME to a disk with room" if inside else ""
        return (f"no space left on device under {under}{writing}; free some space there{move}, then"
                " run again (nothing stored was lost)")
    if code == errno.EROFS:
        move = " or set CHURN_ASSETS_HOME to a writable directory" if inside else ""
        return f"{under} is on a read-only file system{writing}; remount it read-write{move}"
    if code in _DENIED:
        move = ", or set CHURN_ASSETS_HOME to a directory you own" if inside else ""
        return (f"permission denied on {where}: {_owner(Path(where))} and this process runs as"
                f" {_me()}; run churn-assets as the owner of {under}{move}")
    return None


def diagnose(home) -> str | None:
    """Why the local data directory ``home`` cannot be written, if it cannot: no space,
    a read-only mount or another owner. For faults that do not name a path (SQLite's)."""
    if home is None or location.is_remote(home):
        return None
    probe, _ = _nearest(Path(home))
    try:
        stats = os.statvfs(probe)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return _line(errno.EROFS, str(probe), home)
    if not os.access(probe, os.W_OK | os.X_OK):
        return _line(errno.EACCES, str(probe), home)
    if stats.f_bavail * stats.f_frsize < 1024 * 1024 or (stats.f_files and stats.f_favail == 0):
        return _line(errno.ENOSPC, str(probe), home)
    return None


def fault_in_text(text: str, home=None) -> str | None:
    """The one line for a storage fault quoted in ``text`` (a step's error message, with
    its causes), or None if it quotes none."""
    if not text:
        return None
    for match in _ERRNO.finditer(text):
        line = _line(int(match.group(1)), match.group(2), home)
        if line:
            return line
    if "StorageLocationError: " in text:
        return text.split("StorageLocationError: ", 1)[1].split(" <- ")[0].strip()
    lowered = text.lower()
    if any(words in lowered for words in _SQLITE_FAULTS):
        return diagnose(home) or None
    return None


def fault_of(exc: BaseException, home=None) -> str | None:
    """The one line for ``exc`` if it, or an exception it was raised from, is a storage
    fault of the data directory ``home``; None otherwise."""
    seen: set[int] = set()
    chain = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in chain:
        if isinstance(error, location.StorageLocationError):
            return str(error)
        if isinstance(error, OSError) and error.errno is not None:
            line = _line(error.errno, error.filename, home)
            if line:
                return line
    for error in chain:
        if any(words in str(error).lower() for words in _SQLITE_FAULTS):
            return diagnose(home) or (f"the Dagster instance's SQLite database under {home} failed:"
                                      f" {str(error).splitlines()[0]}")
    return None

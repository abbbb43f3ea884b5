"""A data directory that cannot be used: full, read-only, or someone else's. Every
command says so in one line naming the path and what to do, exits non-zero, and leaves
what was stored as it was. Real file systems: a small tmpfs mounted for the test (the
tests run as root, as CI does), and an unprivileged user (nobody) for ownership, since
root passes every permission check. docs/reliability.md ("Storage") maps each case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from churn_assets_tests.test_storage_robustness import make_registry, tree

CLI = str(Path(sys.executable).with_name("churn-assets"))
NOBODY = 65534


def _run(args: list[str], home: Path, *, as_nobody: bool = False, scratch: Path | None = None,
         config: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHURN_ASSETS_CONFIG")}
    env.update(CHURN_ASSETS_HOME=str(home), OMP_NUM_THREADS="1")
    if config is not None:
        env["CHURN_ASSETS_CONFIG"] = str(config)
    command = [CLI, *args]
    if as_nobody:
        # A home of its own for matplotlib's and Dagster's caches: root's is not readable.
        env.update(HOME=str(scratch), MPLCONFIGDIR=str(scratch / "mpl"))
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=scratch or home.parent)


def one_line_failure(done: subprocess.CompletedProcess, command: str) -> str:
    """The single stderr line of a command that failed cleanly."""
    assert done.returncode not in (0, 2), (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"churn-assets {command}: "), done.stderr[-3000:]
    return lines[0]


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real, small file system mounted at ``where`` for the test, always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, leave_bytes: int = 0) -> None:
    """Fill ``disk`` until at most ``leave_bytes`` are free."""
    with open(disk / "ballast", "wb") as fh:
        try:
            while shutil.disk_usage(disk).free > leave_bytes:
                fh.write(b"\0" * min(65536, max(4096, shutil.disk_usage(disk).free - leave_bytes)))
                fh.flush()
        except OSError:
            pass  # full


# -- a full disk ------------------------------------------------------------------------------

def test_a_completely_full_disk_is_one_line_and_loses_nothing(tmp_path):
    with tmpfs(tmp_path / "disk", "3m") as disk:
        home = disk / "home"
        make_registry(home)
        before = tree(home / "registry")
        fill(disk)
        done = _run(["materialize", "--as-of", "2026-05-04"], home)
        line = one_line_failure(done, "materialize")
        assert f"no space left on device under {home}" in line, line
        assert tree(home / "registry") == before
        listed = _run(["versions"], home)  # reading still works
        assert listed.returncode == 0 and "* v0003" in listed.stdout, listed.stderr[-2000:]


def test_a_disk_that_fills_during_the_run_names_the_file_in_one_line(tmp_path):
    # Room for the Dagster instance (about 0.4 MB), not for the batch the simulator
    # lands (about 5 MB of Parquet for 20,000 customers).
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 20000\n')
    with tmpfs(tmp_path / "disk", "4m") as disk:
        home = disk / "home"
        make_registry(home)
        before = tree(home / "registry")
        fill(disk, leave_bytes=1536 * 1024)
        done = _run(["materialize", "--as-of", "2026-05-04"], home, config=config)
        line = one_line_failure(done, "materialize")
        assert f"failed at raw_customers: no space left on device under {home} (writing {home}/landing/batch-" \
            in line, line
        assert "retrying" not in done.stdout  # a full disk is not a transient fault
        assert tree(home / "registry") == before
        assert not (home / "history" / "state.json").exists()  # no watermark moved
        [log] = (home / "logs").glob("materialize-*.log")  # the log has the reason too
        assert "no space left on device" in log.read_text().lower()


# -- a read-only data directory ---------------------------------------------------------------

@pytest.mark.parametrize("args", [["materialize", "--as-of", "2026-05-04"], ["rollback"],
                                  ["rollback", "--to", "v0001"]])
def test_a_read_only_data_directory_is_one_line(tmp_path, args):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        home = disk / "home"
        make_registry(home)
        before = tree(home)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        line = one_line_failure(_run(args, home), args[0])
        assert f"{home} is on a read-only file system" in line and "writable directory" in line, line
        assert tree(home) == before
        listed = _run(["versions"], home)
        assert listed.returncode == 0 and "* v0003" in listed.stdout, listed.stderr[-2000:]


# -- a data directory owned by someone else ---------------------------------------------------

@pytest.fixture
def foreign_home():
    """A data directory of root's, and a scratch folder the unprivileged user may use."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own a data directory that another user then opens")
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            sys.executable, "-c", "import churn_assets.cli"], capture_output=True, text=True,
                           cwd="/", timeout=120)
    if probe.returncode != 0:  # e.g. a checkout inside a folder only root may enter
        pytest.skip(f"user nobody cannot run this checkout's Python: {probe.stderr.strip()[-300:]}")
    base = Path(tempfile.mkdtemp(prefix="churn-foreign-"))
    try:
        os.chmod(base, 0o755)
        scratch = base / "scratch"
        scratch.mkdir()
        os.chown(scratch, NOBODY, NOBODY)
        home = base / "home"
        make_registry(home)
        home.chmod(0o700)
        yield home, scratch
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("args", [["versions"], ["card"], ["rollback"], ["rollback", "--to", "v0001"],
                                  ["materialize", "--as-of", "2026-05-04"]])
def test_a_data_directory_of_another_user_is_one_line(foreign_home, args):
    home, scratch = foreign_home
    before = tree(home)
    line = one_line_failure(_run(args, home, as_nobody=True, scratch=scratch), args[0])
    assert f"permission denied on {home}" in line, line
    assert "belongs to root (uid 0)" in line and "runs as nobody (uid 65534)" in line, line
    assert f"run churn-assets as the owner of {home}" in line, line
    assert tree(home) == before


def test_faults_that_are_not_the_storage_keep_their_traceback():
    # The handler names storage faults only: a bug must not hide behind a tidy line.
    from churn_assets.storage.faults import fault_in_text, fault_of

    assert fault_of(KeyError("x")) is None and fault_of(ValueError("disk")) is None
    assert fault_in_text("ValueError: could not convert string to float: 'abc'") is None
    try:
        try:
            raise OSError(28, "No space left on device", "/data/h/x.parquet")
        except OSError as exc:
            raise RuntimeError("write failed") from exc
    except RuntimeError as wrapped:
        assert fault_of(wrapped, "/data/h").startswith("no space left on device under /data/h (writing"
                                                       " /data/h/x.parquet)")

"""Issue 8, "nothing lost, nothing stuck": damaged registry files, failed writes and
symlinks (private file modes are in test_registry.py). Every test works on real files and checks that what it did not
mean to touch (pointer, other versions, model files, event log) is unchanged byte for byte.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from churn_assets import cli
from churn_assets.storage.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    clean_stale_temporaries,
    private_mkdir,
)
from churn_assets.storage.registry import (
    CorruptFileError,
    ModelRegistry,
    RegistryError,
    UnknownVersionError,
    UnsafePathError,
)

REPO = Path(__file__).resolve().parents[1]


class TinyModel:
    def __init__(self, value):
        self.value = value


class ExplodingPickle:
    """Pickling it fails the way a full disk does, halfway through a model file."""

    def __reduce__(self):
        raise OSError(28, "No space left on device")


def make_registry(tmp_path, count=3, promote_upto=3) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    for i in range(count):
        version = registry.register(TinyModel(i), {"metrics": {"roc_auc": 0.7 + i / 100}})
        if i < promote_upto:
            registry.promote(version.version, reason="test")
    return registry


def tree(root: Path) -> dict:
    """Every entry under ``root`` with its bytes (files) or target (symlinks); not the lock."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if name == ".lock":
                continue
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes()
    return found


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 600, text
    return text


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **env}, timeout=120)


# -- 1. one damaged file never blocks the registry ------------------------------------------

GARBAGE = [b"\x00\xff\xfe garbage", b"", b"   \n", b"{}", b"[1, 2]", b'{"sha256": 5}',
           b'{"sha256": "abc"', b"[" * 100_000]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_a_damaged_old_manifest_is_skipped_reported_and_does_not_block_deploys(tmp_path, garbage):
    registry = make_registry(tmp_path)
    damaged = registry.versions_dir / "v0001" / "manifest.json"
    damaged.write_bytes(garbage)
    before = tree(registry.root)

    assert [v.version for v in registry.versions()] == ["v0002", "v0003"]
    [problem] = registry.problems()
    assert isinstance(problem, CorruptFileError) and problem.path == damaged
    assert str(damaged) in one_line(problem)
    with pytest.raises(CorruptFileError, match="v0001/manifest.json"):
        registry.get("v0001")
    with pytest.raises(CorruptFileError):
        registry.rollback(to="v0001")
    assert registry.production().version == "v0003"
    assert tree(registry.root) == before

    # what deployed_model does: read production, register, promote
    new = registry.register(TinyModel(9), {"metrics": {}})
    registry.promote(new.version, reason="deploy")
    assert new.version == "v0004" and registry.production().version == "v0004"
    assert registry.load(registry.get("v0002")).value == 1
    assert damaged.read_bytes() == garbage


def test_a_damaged_newest_version_keeps_its_number(tmp_path):
    """The next version is numbered above a damaged one, never onto it: an empty v0004
    folder would otherwise be silently replaced by os.rename."""
    registry = make_registry(tmp_path)
    (registry.versions_dir / "v0004").mkdir()                       # no manifest at all
    registry.versions_dir.joinpath("v0006").write_bytes(b"a file")  # not even a folder
    before = tree(registry.root)

    assert [str(p.path.name) for p in registry.problems()] == ["manifest.json", "manifest.json"]
    new = registry.register(TinyModel(7), {})
    assert new.version == "v0007"
    after = tree(registry.root)
    assert {k: v for k, v in after.items() if not k.startswith("versions/v0007")} == before


@pytest.mark.parametrize("pointer", [b"\x00garbage", b"", b"{}", b"[]", b'{"version": "../../etc"}',
                                     b'{"version": 3}', b'{"version": "v0002"'])
def test_a_damaged_pointer_names_itself_and_rollback_to_repairs_it(tmp_path, pointer):
    registry = make_registry(tmp_path)
    registry.pointer_path.write_bytes(pointer)
    before = tree(registry.root)

    for call in (registry.production, registry.production_pointer, registry.rollback):
        with pytest.raises(CorruptFileError) as caught:
            call()
        message = one_line(caught.value)
        assert str(registry.pointer_path) in message and "churn-assets rollback --to vNNNN" in message
    assert [v.version for v in registry.versions()] == ["v0001", "v0002", "v0003"]
    assert tree(registry.root) == before

    repaired = registry.rollback(to="v0002")
    assert repaired["previous"] is None and registry.production().version == "v0002"
    event = json.loads(registry.events_path.read_text().splitlines()[-1])
    assert event["version"] == "v0002" and event["replaced_unreadable_pointer"]
    assert registry.problems() == []


def test_a_missing_pointer_is_repaired_by_rollback_to(tmp_path):
    registry = make_registry(tmp_path)
    registry.pointer_path.unlink()
    with pytest.raises(RegistryError, match="nothing is in production"):
        registry.rollback()
    assert registry.rollback(to="v0001")["version"] == "v0001"


def test_a_pointer_to_a_vanished_version_is_reported_and_repairable(tmp_path):
    registry = make_registry(tmp_path)
    atomic_write_json(registry.pointer_path, {"version": "v0042", "sha256": "0" * 64})
    with pytest.raises(UnknownVersionError, match="no model version 'v0042'"):
        registry.production()
    assert any("v0042" in str(p) for p in registry.problems())
    assert registry.rollback()["version"] == "v0003"  # the newest older than v0042


ABSURD = ["../x", "../../etc/passwd", "/etc/passwd", "v0001/../v0002", "v0001/manifest.json",
          "v0001\n", "", "v" + "0" * 9_999 + "1", "x" * 10_000, b"v0001", 3]


@pytest.mark.parametrize("name", ABSURD, ids=range(len(ABSURD)))
def test_absurd_version_names_are_unknown_versions(tmp_path, name):
    registry = make_registry(tmp_path)
    before = tree(registry.root)
    for call in (registry.get, lambda n: registry.promote(n, "test"), lambda n: registry.rollback(to=n)):
        with pytest.raises(UnknownVersionError) as caught:
            call(name)
        assert one_line(caught.value).startswith("no model version ")
    assert tree(registry.root) == before


def test_cli_lists_and_repairs_despite_damaged_files(tmp_path, monkeypatch, capsys):
    registry = make_registry(tmp_path)
    (registry.versions_dir / "v0001" / "manifest.json").write_bytes(b"\x00garbage")
    registry.pointer_path.write_bytes(b"{}")
    model_bytes = registry.get("v0002").artifact_path.read_bytes()
    monkeypatch.setenv("CHURN_ASSETS_HOME", str(tmp_path))

    assert cli.main(["versions"]) == 0
    out, err = capsys.readouterr()
    listed = out.split("production changes:")[0]  # the event log below still names v0001
    assert "  v0002" in listed and "  v0003" in listed and "v0001" not in listed
    assert "v0001/manifest.json: is not valid JSON" in err
    assert "production.json: names no version" in err and "rollback --to vNNNN" in err

    assert cli.main(["rollback"]) == 2
    assert "production.json" in capsys.readouterr().err

    assert cli.main(["rollback", "--to", "v0002"]) == 0
    assert "production is now v0002" in capsys.readouterr().out
    assert cli.main(["versions"]) == 0
    assert "* v0002" in capsys.readouterr().out
    assert registry.get("v0002").artifact_path.read_bytes() == model_bytes


# -- 2. no temporaries left behind ------------------------------------------------------------

def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".staging"))


def test_a_failed_atomic_write_removes_its_temporary(tmp_path):
    target = tmp_path / "data" / "state.json"
    target.mkdir(parents=True)  # a folder where the file would go: os.replace fails
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(target, b"payload")
    assert temporaries(target.parent) == []


def test_disk_full_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old contents")
    # A real failing write: the file-size limit makes write() fail with EFBIG, as a full
    # disk fails with ENOSPC, after part of the payload has been written.
    out = run_python(f"""
        import resource, signal
        from pathlib import Path
        from churn_assets.storage.atomic import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            atomic_write_bytes(Path({str(target)!r}), b"x" * 100_000)
        except OSError as exc:
            print("failed:", exc.errno)
        """)
    assert "failed: 27" in out.stdout, out.stderr
    assert target.read_bytes() == b"old contents"
    assert temporaries(tmp_path) == []


def test_a_failed_registration_leaves_no_staging_folder(tmp_path):
    registry = make_registry(tmp_path)
    before = tree(registry.root)
    with pytest.raises(OSError, match="No space left"):
        registry.register([b"x" * 200_000, ExplodingPickle()], {})
    assert temporaries(registry.versions_dir) == []
    assert tree(registry.root) == before
    assert registry.register(TinyModel(5), {}).version == "v0004"


def test_disk_full_during_register_and_promote_changes_nothing(tmp_path):
    registry = make_registry(tmp_path, count=3, promote_upto=2)
    before = tree(registry.root)
    out = run_python(f"""
        import resource, signal
        from churn_assets.storage.registry import ModelRegistry
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        registry = ModelRegistry({str(registry.root)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
        for action in (lambda: registry.register(b"m" * 100_000, {{}}),
                       lambda: registry.promote("v0003", reason="test")):
            try:
                action()
            except OSError as exc:
                print("failed:", exc.errno)
        """)
    assert out.stdout.count("failed: 27") == 2, out.stdout + out.stderr
    assert tree(registry.root) == before
    assert temporaries(registry.root) == [] and temporaries(registry.versions_dir) == []


def test_leftovers_of_killed_writers_are_swept_on_the_next_write(tmp_path):
    registry = make_registry(tmp_path)
    gone, mine = dead_pid(), os.getpid()
    leftovers = [registry.root / f".production.json.{gone}-0badc0de.tmp",
                 registry.root / f".production.json.{gone}.tmp",  # the old naming
                 registry.versions_dir / f".staging-{gone}-1700000000"]
    for path in leftovers[:2]:
        path.write_bytes(b"half a pointer")
    leftovers[2].mkdir()
    (leftovers[2] / "model.joblib").write_bytes(b"half a model")
    old_but_alive = registry.root / f".production.json.{mine}-00000001.tmp"
    old_but_alive.write_bytes(b"")
    os.utime(old_but_alive, (time.time() - 3 * 86400,) * 2)  # PID since reused: too old to be a write
    in_progress = registry.root / f".production.json.{mine}-00000002.tmp"
    in_progress.write_bytes(b"")
    unrelated = [registry.root / "notes.tmp", registry.root / ".hidden", registry.versions_dir / ".staging"]
    for path in unrelated:
        path.write_bytes(b"keep me")
    model_bytes = {v.version: v.artifact_path.read_bytes() for v in registry.versions()}

    registry.register(TinyModel(4), {})
    assert not leftovers[2].exists()
    registry.promote("v0004", reason="test")
    assert not any(os.path.lexists(p) for p in leftovers + [old_but_alive])
    assert in_progress.exists() and all(p.read_bytes() == b"keep me" for p in unrelated)
    assert {v.version: v.artifact_path.read_bytes() for v in registry.versions()
            if v.version != "v0004"} == model_bytes


def test_sweeping_removes_a_symlinked_temporary_without_following_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    work = private_mkdir(tmp_path / "work")
    (work / f".staging-{dead_pid()}-x").symlink_to(outside)
    assert len(clean_stale_temporaries(work)) == 1
    assert (outside / "precious").read_bytes() == b"keep" and list(work.iterdir()) == []


# -- 3. symlinks out of the registry are refused ------------------------------------------

def test_a_version_folder_linked_outside_the_registry_is_refused(tmp_path):
    registry = make_registry(tmp_path)
    outside = tmp_path / "elsewhere" / "v0009"
    outside.parent.mkdir()
    shutil.copytree(registry.versions_dir / "v0001", outside)  # a valid-looking version
    (registry.versions_dir / "v0009").symlink_to(outside)
    before = tree(tmp_path)

    assert [v.version for v in registry.versions()] == ["v0001", "v0002", "v0003"]
    [problem] = registry.problems()
    assert isinstance(problem, UnsafePathError) and "outside the registry" in one_line(problem)
    for call in (registry.get, lambda v: registry.promote(v, "test"), lambda v: registry.rollback(to=v)):
        with pytest.raises(UnsafePathError, match="v0009"):
            call("v0009")
    assert tree(tmp_path) == before
    assert registry.register(TinyModel(1), {}).version == "v0010"


def test_a_versions_folder_linked_outside_and_a_symlink_loop_are_reported_not_followed(tmp_path):
    registry = make_registry(tmp_path)
    (registry.versions_dir / "v0005").symlink_to("v0005")  # a loop: resolve() cannot end
    [problem] = registry.problems()
    assert isinstance(problem, UnsafePathError) and "v0005" in one_line(problem)
    assert [v.version for v in registry.versions()] == ["v0001", "v0002", "v0003"]

    elsewhere = tmp_path / "elsewhere"
    registry.versions_dir.rename(elsewhere)
    registry.versions_dir.symlink_to(elsewhere)
    before = tree(tmp_path)
    assert registry.versions() == []
    assert any(isinstance(p, UnsafePathError) and "versions" in str(p) for p in registry.problems())
    with pytest.raises(UnsafePathError, match="outside the registry"):
        registry.register(TinyModel(1), {})
    with pytest.raises(UnsafePathError):
        registry.rollback(to="v0001")
    assert tree(tmp_path) == before


def test_a_model_file_linked_outside_the_registry_is_not_loaded(tmp_path):
    registry = make_registry(tmp_path)
    artifact = registry.get("v0001").artifact_path
    copy = tmp_path / "model-elsewhere.joblib"
    copy.write_bytes(artifact.read_bytes())  # same sha256: only the location is wrong
    version = registry.get("v0001")
    artifact.unlink()
    artifact.symlink_to(copy)
    before = tree(registry.root)
    with pytest.raises(UnsafePathError, match="model.joblib"):
        registry.load(version)
    with pytest.raises(UnsafePathError):
        registry.rollback(to="v0001")
    assert tree(registry.root) == before


@pytest.mark.parametrize("name", ["production.json", "events.jsonl"])
def test_pointer_and_event_log_are_not_written_through_a_symlink(tmp_path, name):
    registry = make_registry(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes((registry.root / name).read_bytes())
    (registry.root / name).unlink()
    (registry.root / name).symlink_to(victim)
    before, victim_bytes = tree(registry.root), victim.read_bytes()

    for call in (lambda: registry.promote("v0001", reason="test"), lambda: registry.rollback(to="v0001")):
        with pytest.raises(UnsafePathError) as caught:
            call()
        assert str(registry.root / name) in one_line(caught.value)
    assert tree(registry.root) == before and victim.read_bytes() == victim_bytes
    assert not any(p.name.endswith(".tmp") for p in registry.root.iterdir())


def test_a_partial_last_event_line_does_not_swallow_the_next_event(tmp_path):
    registry = make_registry(tmp_path)
    with open(registry.events_path, "ab") as fh:
        fh.write(b'{"event": "promote", "vers')  # a crash mid-append
    registry.rollback(to="v0001")
    lines = registry.events_path.read_text().splitlines()
    assert json.loads(lines[-1])["version"] == "v0001"
    assert [json.loads(line)["version"] for line in lines[:3]] == ["v0001", "v0002", "v0003"]

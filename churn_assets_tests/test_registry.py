"""The registry: versions, atomic promotion, rollback, integrity, private files."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from churn_assets.storage.atomic import atomic_write_json, private_mkdir
from churn_assets.storage.registry import IntegrityError, ModelRegistry, RegistryError


class TinyModel:
    def __init__(self, value):
        self.value = value


def registry_with(tmp_path, count):
    registry = ModelRegistry(tmp_path / "registry")
    for i in range(count):
        version = registry.register(TinyModel(i), {"fingerprint": f"f{i}", "metrics": {"roc_auc": 0.7 + i / 100}})
        registry.promote(version.version, reason="test")
    return registry


def test_versions_are_numbered_and_kept(tmp_path):
    registry = registry_with(tmp_path, 3)
    assert [v.version for v in registry.versions()] == ["v0001", "v0002", "v0003"]
    assert registry.production().version == "v0003"
    assert registry.load(registry.get("v0002")).value == 1
    events = [json.loads(line) for line in registry.events_path.read_text().splitlines()]
    assert [e["version"] for e in events] == ["v0001", "v0002", "v0003"]
    assert not list(registry.versions_dir.glob(".staging*"))


def test_rollback_defaults_to_the_next_older_version_and_accepts_a_target(tmp_path):
    registry = registry_with(tmp_path, 3)
    assert registry.rollback()["version"] == "v0002"
    assert registry.rollback()["version"] == "v0001"
    with pytest.raises(RegistryError, match="oldest version"):
        registry.rollback()
    assert registry.rollback(to="v0003")["version"] == "v0003"
    with pytest.raises(RegistryError, match="no model version 'v0009'"):
        registry.rollback(to="v0009")
    assert registry.production().version == "v0003"


def test_rollback_with_nothing_in_production(tmp_path):
    with pytest.raises(RegistryError, match="nothing is in production"):
        ModelRegistry(tmp_path / "registry").rollback()


def test_tampered_artifact_is_refused_and_production_unchanged(tmp_path):
    registry = registry_with(tmp_path, 2)
    target = registry.get("v0001")
    with open(target.artifact_path, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(IntegrityError, match="does not match"):
        registry.load(target)
    pointer = registry.pointer_path.read_bytes()
    with pytest.raises(IntegrityError):
        registry.rollback(to="v0001")
    assert registry.pointer_path.read_bytes() == pointer


def test_missing_artifact_is_an_integrity_error(tmp_path):
    registry = registry_with(tmp_path, 1)
    registry.get("v0001").artifact_path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.load(registry.get("v0001"))


def test_cli_rollback_and_versions(tmp_path):
    registry_with(tmp_path, 2)
    env = {"CHURN_ASSETS_HOME": str(tmp_path), "PATH": ""}
    run = lambda *args: subprocess.run([sys.executable, "-m", "churn_assets.cli", *args],
                                       capture_output=True, text=True, env=env, timeout=120)
    out = run("rollback")
    assert out.returncode == 0, out.stderr
    assert "production is now v0001 (was v0002)" in out.stdout
    listing = run("versions").stdout
    assert "* v0001" in listing and "  v0002" in listing
    bad = run("rollback", "--to", "v0042")
    assert bad.returncode == 2 and "no model version 'v0042'" in bad.stderr
    assert ModelRegistry(tmp_path / "registry").production().version == "v0001"


# -- 4. private files -------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(root: Path) -> dict:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_registry_files_are_private_whatever_the_umask(tmp_path, umask):
    registry = registry_with(tmp_path / "home", 3)
    registry.rollback()
    listed = modes(tmp_path / "home")
    assert {"registry", "registry/versions", "registry/versions/v0002/model.joblib",
            "registry/production.json", "registry/events.jsonl", "registry/.lock"} <= set(listed)
    for rel, mode in listed.items():
        want = 0o700 if (tmp_path / "home" / rel).is_dir() else 0o600
        assert mode == want, f"{rel} is {oct(mode)} under umask {oct(umask)}"


def test_atomic_writes_and_private_mkdir_are_private_whatever_the_umask(tmp_path, umask):
    target = tmp_path / "a" / "b" / "state.json"
    atomic_write_json(target, {"x": 1})
    made = private_mkdir(tmp_path / "c" / "d")
    for path, want in [(tmp_path / "a", 0o700), (tmp_path / "a" / "b", 0o700), (target, 0o600),
                       (tmp_path / "c", 0o700), (made, 0o700)]:
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_an_existing_registry_is_made_private_on_the_next_write(tmp_path):
    registry = registry_with(tmp_path, 3)
    for path in (registry.root, registry.versions_dir):
        path.chmod(0o755)
    registry.events_path.chmod(0o644)
    registry.register(TinyModel(4), {})
    registry.rollback()
    assert stat.S_IMODE(registry.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(registry.versions_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(registry.events_path.stat().st_mode) == 0o600

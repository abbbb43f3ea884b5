"""The operator's pin in the registry: a version chosen by hand stays until ``unpin``,
locally and on object storage, written atomically and surviving kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from churn_assets.storage.object_registry import ObjectModelRegistry
from churn_assets.storage.pointer import PinnedError, manual_change_at, pin_of
from churn_assets.storage.registry import ModelRegistry, RegistryError
from churn_assets_tests.test_object_storage import moto_endpoint, s3  # noqa: F401 - fixtures
from churn_assets_tests.test_registry import TinyModel

REPO = Path(__file__).resolve().parents[1]


def three_versions(registry: ModelRegistry) -> ModelRegistry:
    for i in range(3):
        version = registry.register(TinyModel(i), {"fingerprint": f"f{i}"})
        registry.promote(version.version, reason="test", run_id=f"run{i}", unless_pinned=True)
    return registry


def check_pin_lifecycle(registry: ModelRegistry) -> None:
    three_versions(registry)
    pointer = registry.rollback(to="v0001", pinned_by="alice (churn-assets rollback)")
    assert pointer["version"] == "v0001" and pin_of(pointer)["by"] == "alice (churn-assets rollback)"
    assert manual_change_at(registry.production_pointer()) == pointer["pinned"]["at"]

    # A refresh's promotion is refused while pinned, and production does not move.
    fresh = registry.register(TinyModel(9), {"fingerprint": "f9"})
    with pytest.raises(PinnedError, match=r"production v0001 is pinned by the operator .*churn-assets unpin"):
        registry.promote(fresh.version, reason="passed gate", run_id="run9", unless_pinned=True)
    assert registry.production_pointer() == pointer

    # A promotion by hand moves production and keeps it pinned.
    by_hand = registry.promote("v0002", reason="promoted by hand", pinned_by="bob (churn-assets promote)")
    assert pin_of(registry.production_pointer())["by"] == "bob (churn-assets promote)"

    unpinned = registry.unpin(by="bob (churn-assets unpin)")
    assert unpinned["version"] == "v0002" and pin_of(unpinned) is None
    assert manual_change_at(unpinned) == unpinned["unpinned_at"] >= by_hand["pinned"]["at"]
    with pytest.raises(RegistryError, match="production v0002 is not pinned"):
        registry.unpin(by="bob")
    # Unpinned: the next refresh promotes again.
    assert registry.promote(fresh.version, reason="passed gate", unless_pinned=True)["version"] == fresh.version
    kinds = [(e["event"], e.get("version"), bool(e.get("pinned"))) for e in registry.events()]
    assert kinds[-4:] == [("promote", "v0001", True), ("promote", "v0002", True), ("unpin", "v0002", True),
                          ("promote", fresh.version, False)]


def test_a_rollback_pins_production_until_unpin_locally(tmp_path):
    check_pin_lifecycle(ModelRegistry(tmp_path / "registry"))


def test_a_rollback_pins_production_until_unpin_on_object_storage(s3):  # noqa: F811
    _, bucket, _ = s3
    check_pin_lifecycle(ObjectModelRegistry(f"s3://{bucket}/churn/registry"))


def test_a_refresh_that_read_the_pointer_before_the_pin_cannot_overwrite_it_on_s3(s3):  # noqa: F811
    _, bucket, _ = s3
    root = f"s3://{bucket}/churn/registry"
    refresh = three_versions(ObjectModelRegistry(root))
    fresh = refresh.register(TinyModel(9), {"fingerprint": "f9"})
    operator = ObjectModelRegistry(root)
    read = refresh._current_pointer

    def read_then_operator_rolls_back():
        # The refresh has taken the pointer's ETag and read it unpinned; the operator's
        # rollback lands before the refresh's PUT.
        seen = read()
        if not pin_of(operator.production_pointer()):
            operator.rollback(to="v0001", pinned_by="alice")
        return seen

    refresh._current_pointer = read_then_operator_rolls_back
    with pytest.raises(PinnedError):
        refresh.promote(fresh.version, reason="passed gate", unless_pinned=True)
    assert operator.production_pointer()["version"] == "v0001"
    assert pin_of(operator.production_pointer())["by"] == "alice"


# A rollback in its own process, stopped (then killed) at a chosen point of the write.
KILLED_ROLLBACK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import churn_assets.storage.atomic as atomic
    import churn_assets.storage.registry as registry_module
    from churn_assets.storage.registry import ModelRegistry

    root, where, sentinel = sys.argv[1:4]
    def stall(*args, **kwargs):
        Path(sentinel).write_text(where)
        time.sleep(600)
    if where == "before_rename":  # the new pointer is written and fsynced, not yet renamed
        real_replace = atomic.os.replace
        def replace(src, dst, *a, **k):
            if str(dst).endswith("production.json"):
                stall()
            return real_replace(src, dst, *a, **k)
        atomic.os.replace = replace
    else:  # after the pointer is in place, before the event is logged
        registry_module.append_line = stall
    ModelRegistry(root).rollback(to="v0001", pinned_by="alice")
""")


@pytest.mark.parametrize("where", ["before_rename", "after_pointer"])
def test_a_pin_is_whole_or_absent_after_kill_9(tmp_path, where):
    registry = three_versions(ModelRegistry(tmp_path / "registry"))
    before = registry.production_pointer()
    sentinel = tmp_path / "stalled"
    child = subprocess.Popen([sys.executable, "-c", KILLED_ROLLBACK, str(registry.root), where, str(sentinel)],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not sentinel.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    pointer = json.loads(registry.pointer_path.read_text())
    if where == "before_rename":
        assert pointer == before and pin_of(pointer) is None
    else:
        assert pointer["version"] == "v0001" and pin_of(pointer)["by"] == "alice"
        fresh = registry.register(TinyModel(9), {"fingerprint": "f9"})
        with pytest.raises(PinnedError):
            registry.promote(fresh.version, reason="passed gate", unless_pinned=True)
    # The killed writer's temporary is swept by the next write; the pointer stays readable.
    registry.promote("v0003", reason="by hand", pinned_by="bob")
    assert not [p for p in registry.root.iterdir() if p.name.endswith(".tmp")]

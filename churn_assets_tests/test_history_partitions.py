"""The weekly-partitioned customer history: windowed reads, crash safety, migration, locking."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from churn_assets.core.spec import LABEL, churn_label, load_spec
from churn_assets.core.training import WindowPlan, split_by_time
from churn_assets.defs.window import load_training_history, window_start
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.storage.history import CustomerHistory, HistoryError

SPEC = load_spec("simulator")
KEYS = SPEC.key_columns
SIM = SimulatorSettings(n_customers=300)


def files(history: CustomerHistory) -> dict:
    """Week file name -> (inode, bytes): a rewritten file gets a new inode (atomic rename)."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(history.weeks_dir.glob("*.parquet"))}


def sorted_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEYS, kind="stable").reset_index(drop=True)


def test_one_file_per_week_and_an_upsert_rewrites_only_the_weeks_it_touches(tmp_path):
    history = CustomerHistory(tmp_path / "history")
    first = simulate(SIM, "2026-03-02")
    history.upsert(first, KEYS, state={"watermark": "w1"})
    assert [w.strftime("%Y-%m-%d") for w in history.weeks()] == [
        f"{d:%Y-%m-%d}" for d in pd.date_range("2026-01-05", "2026-03-02", freq="W-MON")]
    assert all(w.weekday() == 0 for w in history.weeks())
    before = files(history)
    # A week later: one new week, plus labels corrected in the weeks still inside the horizon.
    later = simulate(SIM, "2026-03-09")
    changed = later.merge(first, on=KEYS, how="left", suffixes=("", "_old"), indicator=True)
    touched = {f"{d:%Y-%m-%d}.parquet" for d in changed.loc[
        (changed["_merge"] == "left_only") | (changed["updated_at"] != changed["updated_at_old"]),
        "snapshot_date"].dt.to_period("W-SUN").dt.start_time}
    summary = history.upsert(later, KEYS, state={"watermark": "w2"})
    after = files(history)
    rewritten = {name for name in after if before.get(name, (None,))[0] != after[name][0]}
    assert rewritten == touched
    assert "2026-03-09.parquet" in rewritten and "2026-01-05.parquet" not in rewritten
    assert summary.total_rows == len(later) == len(history.load())
    assert summary.inserted == len(later) - len(first)
    pd.testing.assert_frame_equal(history.load(), sorted_rows(later))


def test_windowed_read_opens_only_its_weeks_and_columns(tmp_path):
    history = CustomerHistory(tmp_path / "history")
    frame = simulate(SIM, "2026-04-06")
    history.upsert(frame, KEYS)
    # A week file outside the window that cannot be read proves it is never opened.
    history.week_path(pd.Timestamp("2026-01-05")).write_bytes(b"not parquet")
    got = history.load(since="2026-03-04", until="2026-03-20", columns=["customer_id", "plan"])
    expected = sorted_rows(frame[frame["snapshot_date"].between("2026-03-04", "2026-03-20")])
    assert list(got.columns) == ["customer_id", "plan"]
    pd.testing.assert_frame_equal(got, expected[["customer_id", "plan"]])
    with pytest.raises(Exception):
        history.load()  # the whole history does read the broken week


@pytest.mark.parametrize("window", [WindowPlan(), WindowPlan(6, 2, 1)])
def test_training_window_read_splits_exactly_like_the_whole_history(tmp_path, window):
    history = CustomerHistory(tmp_path / "history")
    as_of = pd.Timestamp("2026-11-30")
    history.upsert(simulate(SIM, as_of), KEYS)
    windowed = load_training_history(history, SPEC, window, as_of)
    everything = history.load()
    assert len(windowed) < len(everything) / 2  # the point: most of the past is not read
    assert windowed[SPEC.timestamp_column].min() >= window_start(SPEC, window, as_of)
    _assert_same_split(windowed, everything, window, as_of)


def test_a_history_with_a_gap_falls_back_to_the_whole_history(tmp_path):
    # The source stopped publishing in April: the newest labelled weeks are months before
    # as_of, so the training window lies before window_start and the read must widen.
    history = CustomerHistory(tmp_path / "history")
    history.upsert(simulate(SIM, "2026-04-27"), KEYS)
    as_of = pd.Timestamp("2026-09-07")
    windowed = load_training_history(history, SPEC, WindowPlan(), as_of)
    everything = history.load()
    pd.testing.assert_frame_equal(windowed, everything)
    _assert_same_split(windowed, everything, WindowPlan(), as_of)


def _assert_same_split(part, whole, window, as_of):
    frames = []
    for stored in (part.copy(), whole.copy()):
        stored[LABEL] = churn_label(stored[SPEC.target_column], SPEC)
        frames.append(split_by_time(stored, SPEC, window, as_of))
    a, b = frames
    for name in ("train", "validation", "holdout"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.held_back_rows == b.held_back_rows and a.label_cutoff == b.label_cutoff


CRASHING_UPSERT = textwrap.dedent("""
    import os, sys
    import pandas as pd
    import churn_assets.storage.history as module
    real, written = module.atomic_write_bytes, []
    def write_then_die(path, payload):
        real(path, payload)
        written.append(path)
        if len(written) == int(sys.argv[2]):
            os._exit(17)  # a kill: no cleanup, no finally blocks
    module.atomic_write_bytes = write_then_die
    module.CustomerHistory(sys.argv[1]).upsert(
        pd.read_parquet(sys.argv[3]), ["customer_id", "snapshot_date"], state={"watermark": "new"})
""")


def crash_after(writes: int, directory, batch: pd.DataFrame, tmp_path) -> None:
    data = tmp_path / f"batch-{writes}.parquet"
    batch.to_parquet(data, index=False)
    done = subprocess.run([sys.executable, "-c", CRASHING_UPSERT, str(directory), str(writes), str(data)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 17, done.stderr


def test_a_crash_between_two_week_writes_leaves_each_week_old_or_new_and_is_repaired(tmp_path):
    history = CustomerHistory(tmp_path / "history")
    first, later = simulate(SIM, "2026-03-02"), simulate(SIM, "2026-03-09")
    history.upsert(first, KEYS, state={"watermark": "old"})
    old = files(history)
    reference = CustomerHistory(tmp_path / "reference")
    reference.upsert(first, KEYS)
    reference.upsert(later, KEYS)
    new = {name: data for name, (_, data) in files(reference).items()}

    crash_after(2, history.directory, later, tmp_path)  # dies right after the second week file
    now = files(history)
    assert history.state() == {"watermark": "old"}  # the watermark did not move
    states = {name: "old" if old.get(name, (0, None))[1] == data else "new" if new[name] == data else "torn"
              for name, (_, data) in now.items()}
    assert list(states.values()).count("new") >= 1 and "torn" not in states.values()
    assert set(now) - set(old) <= set(new)
    assert any(states[name] == "old" and old[name][1] != new[name] for name in old), \
        "the crash came before every week was written"

    # The next run re-fetches the same batch (old watermark): the upsert completes it ...
    repaired = history.upsert(later, KEYS, state={"watermark": "new"})
    assert {name: data for name, (_, data) in files(history).items()} == new
    assert history.state() == {"watermark": "new"}
    assert repaired.total_rows == len(later) and repaired.changed > 0
    pd.testing.assert_frame_equal(history.load(), sorted_rows(later))
    # ... and is idempotent from then on: nothing changes, no file is rewritten.
    settled = files(history)
    again = history.upsert(later, KEYS, state={"watermark": "new"})
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(later))
    assert files(history) == settled


def legacy_home(tmp_path, frame: pd.DataFrame) -> CustomerHistory:
    """A history as the single-file version wrote it: one sorted customers.parquet."""
    directory = tmp_path / "history"
    directory.mkdir()
    sorted_rows(frame).to_parquet(directory / "customers.parquet", index=False)
    (directory / "state.json").write_text(json.dumps({"watermark": "w1"}))
    return CustomerHistory(directory)


def test_an_old_single_file_history_is_migrated_with_identical_rows(tmp_path):
    first = simulate(SIM, "2026-03-02")
    history = legacy_home(tmp_path, first)
    legacy_rows = pd.read_parquet(history.legacy_path)
    pd.testing.assert_frame_equal(history.load(), legacy_rows)  # readable before migrating
    summary = history.upsert(first.head(0), KEYS, state={"watermark": "w1"})
    assert not history.legacy_path.exists()
    assert summary.total_rows == len(first) and len(history.weeks()) == 9
    pd.testing.assert_frame_equal(history.load(), legacy_rows)
    later = simulate(SIM, "2026-03-09")
    assert history.upsert(later, KEYS).inserted == len(later) - len(first)
    pd.testing.assert_frame_equal(history.load(), sorted_rows(later))


def test_an_interrupted_migration_keeps_the_old_file_until_the_weeks_are_complete(tmp_path):
    first = simulate(SIM, "2026-03-02")
    history = legacy_home(tmp_path, first)
    legacy_rows = pd.read_parquet(history.legacy_path)
    crash_after(3, history.directory, simulate(SIM, "2026-03-09"), tmp_path)
    assert history.legacy_path.exists() and len(history.weeks()) == 3
    pd.testing.assert_frame_equal(history.load(), legacy_rows)  # the old file is still the truth
    later = simulate(SIM, "2026-03-09")
    history.upsert(later, KEYS, state={"watermark": "w2"})
    assert not history.legacy_path.exists()
    pd.testing.assert_frame_equal(history.load(), sorted_rows(later))


def test_garbage_state_names_the_file(tmp_path):
    history = CustomerHistory(tmp_path)
    history.upsert(simulate(SIM, "2026-01-12"), KEYS, state={"watermark": "w1"})
    history.state_path.write_text('{"watermark": "w1"')  # torn by hand
    with pytest.raises(HistoryError, match=f"{history.state_path}.*not valid JSON") as info:
        history.state()
    assert not isinstance(info.value, json.JSONDecodeError)
    history.state_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HistoryError, match=f"{history.state_path}.*not valid JSON"):
        history.state()
    history.state_path.write_text("[1, 2]")
    with pytest.raises(HistoryError, match="must hold a JSON object"):
        history.state()


CONCURRENT_UPSERTS = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from churn_assets.storage.history import CustomerHistory
    directory, data, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    frame = pd.read_parquet(data)
    history = CustomerHistory(directory)
    while time.time() < start:
        time.sleep(0.001)
    # Many small upserts into the same weeks as the other process, each a read-modify-write.
    for _, part in frame.groupby(frame["customer_id"].str[-1]):
        history.upsert(part, ["customer_id", "snapshot_date"])
""")


def test_two_processes_upserting_at_once_lose_no_rows(tmp_path):
    frame = simulate(SimulatorSettings(n_customers=600), "2026-02-09")
    numbers = frame["customer_id"].str[1:].astype(int)
    directory = tmp_path / "history"
    start = time.time() + 3  # both start their first read-modify-write together
    children = []
    for parity in (0, 1):
        data = tmp_path / f"part{parity}.parquet"
        frame[numbers % 2 == parity].to_parquet(data, index=False)
        children.append(subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_UPSERTS, str(directory), str(data), str(start)],
            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")))
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    stored = CustomerHistory(directory).load()
    assert len(stored) == len(frame)
    pd.testing.assert_frame_equal(stored, sorted_rows(frame))

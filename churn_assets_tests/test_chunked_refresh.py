"""A large batch is validated and upserted in chunks of weeks, with the one-shot result.

Chunking exists for memory (BENCHMARKS.md, "History at scale"); these tests pin what it
must not change: the stored history, the error of a bad batch (and that nothing is
written), and the rows, in order, that training is handed.
"""

import errno
import math

import pandas as pd
import pyarrow.dataset as pads
import pytest

from churn_assets.core import validation
from churn_assets.core.spec import LABEL, churn_label, load_spec
from churn_assets.core.training import (NotEnoughHistory, WindowPlan, split_by_time,
                                         training_fingerprint)
from churn_assets.core.validation import RecordValidationError, validate_records, validated_chunks
from churn_assets.defs.data import store_batch
from churn_assets.defs.window import load_modeling_frames, load_training_history
from churn_assets.sources.file import FileSource
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.storage.history import CustomerHistory

from churn_assets_tests.conftest import FIRST_WEEK, history_snapshot, run_graph, simulator

SPEC = load_spec("simulator")
AS_OF = pd.Timestamp("2026-05-04")
STATE = {"watermark": "w1", "as_of": str(AS_OF), "source": "test"}


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    """18 weeks of 300 customers, shuffled so weeks interleave in the batch as they may
    in a source's export (chunks must keep the batch order within a week)."""
    frame = simulate(SimulatorSettings(n_customers=300), AS_OF)
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


def one_shot(history: CustomerHistory, records: pd.DataFrame):
    """What clean_features did before chunking: validate the batch whole, upsert it once."""
    valid = validate_records(records, SPEC)
    return history.upsert(valid.drop(columns=[LABEL]), SPEC.key_columns, state=STATE)


def test_the_batch_really_is_cut_into_many_chunks(batch):
    chunks = list(validated_chunks(batch, SPEC, chunk_rows=700))
    assert len(chunks) > 5  # otherwise the tests below would compare one-shot with one-shot
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    assert sum(len(c) for c, _ in chunks) == len(batch)


def validation_calls(monkeypatch) -> list[int]:
    """Rows of every validate_records call from now on (the real function still runs)."""
    calls, real = [], validation.validate_records

    def counted(records, spec):
        calls.append(len(records))
        return real(records, spec)

    monkeypatch.setattr(validation, "validate_records", counted)
    return calls


def chunks_validated_directly(batch) -> list[pd.DataFrame]:
    positions, timestamps = validation._week_chunks(batch, SPEC, 700)
    return [validate_records(validation._chunk(batch, timestamps, p, SPEC), SPEC) for p in positions]


def test_each_chunk_is_validated_once_and_comes_back_from_disk_exactly(batch, tmp_path, monkeypatch):
    expected = chunks_validated_directly(batch)
    calls = validation_calls(monkeypatch)
    got = list(validated_chunks(batch, SPEC, chunk_rows=700, spill_dir=tmp_path))
    assert len(calls) == len(expected)  # not twice: the second pass reads the spilled chunks
    assert len(got) == len(expected)
    for (frame, _), direct in zip(got, expected):
        pd.testing.assert_frame_equal(frame, direct, check_exact=True)
    assert list(tmp_path.iterdir()) == []  # nothing left on disk


@pytest.mark.parametrize("trouble", ["disk full", "no spill directory"])
def test_chunks_that_cannot_be_spilled_are_validated_again(batch, tmp_path, monkeypatch, trouble):
    expected = chunks_validated_directly(batch)
    spill_dir = tmp_path
    if trouble == "disk full":
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(validation.pq, "write_table", full)
    else:
        spill_dir = tmp_path / "not-there"
    calls = validation_calls(monkeypatch)
    got = list(validated_chunks(batch, SPEC, chunk_rows=700, spill_dir=spill_dir))
    assert len(calls) == 2 * len(expected)
    for (frame, _), direct in zip(got, expected):
        pd.testing.assert_frame_equal(frame, direct, check_exact=True)
    assert list(tmp_path.iterdir()) == []


def test_a_caller_that_stops_early_leaves_no_spilled_chunks(batch, tmp_path):
    chunks = validated_chunks(batch, SPEC, chunk_rows=700, spill_dir=tmp_path)
    next(chunks)
    [spill] = tmp_path.iterdir()
    assert len(list(spill.iterdir())) > 3  # the chunks not yet handed out wait there
    chunks.close()  # what a failed upsert does to the generator
    assert list(tmp_path.iterdir()) == []


def test_chunked_store_gives_the_one_shot_history(batch, tmp_path):
    whole, chunked = CustomerHistory(tmp_path / "whole"), CustomerHistory(tmp_path / "chunked")
    expected = one_shot(whole, batch)
    got = store_batch(chunked, batch, SPEC, STATE, chunk_rows=700)
    assert got == expected
    assert chunked.weeks() == whole.weeks()
    for week in whole.weeks():  # same rows in the same order in every week file
        pd.testing.assert_frame_equal(pd.read_parquet(chunked.week_path(week)),
                                      pd.read_parquet(whole.week_path(week)))
    assert chunked.state() == whole.state() == STATE


def test_training_gets_the_same_rows_in_the_same_order(batch, tmp_path):
    """Model fingerprints and decision signatures hash the training rows in order."""
    whole, chunked = CustomerHistory(tmp_path / "whole"), CustomerHistory(tmp_path / "chunked")
    one_shot(whole, batch)
    store_batch(chunked, batch, SPEC, STATE, chunk_rows=700)
    as_of = AS_OF + pd.Timedelta(days=1)
    # The reference: every stored row, sorted by (customer, date) the way the single-file
    # layout stored them, converted plainly (no column-wise take, no self_destruct).
    reference = pads.dataset([str(whole.week_path(w)) for w in whole.weeks()], format="parquet")
    reference = reference.to_table().sort_by([(k, "ascending") for k in SPEC.key_columns]).to_pandas()
    pd.testing.assert_frame_equal(chunked.load(), reference)
    reference[LABEL] = churn_label(reference[SPEC.target_column], SPEC)
    expected = split_by_time(reference, SPEC, WindowPlan(), as_of)
    fingerprints = [training_fingerprint(frames, SPEC, ["logistic_regression"], 42, "code")
                    for frames in (expected, load_modeling_frames(whole, SPEC, WindowPlan(), as_of),
                                   load_modeling_frames(chunked, SPEC, WindowPlan(), as_of))]
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]


@pytest.mark.parametrize("tuesdays", [False, True])
@pytest.mark.parametrize("as_of", ["2026-01-20", "2026-03-10", "2026-05-04", "2026-05-06",
                                   "2026-07-01", "2026-12-01"])
def test_frames_read_a_split_at_a_time_are_split_by_time_of_the_window(batch, tmp_path, as_of,
                                                                        tuesdays):
    """Too early (NotEnoughHistory), inside the history, at its end, and after a gap
    (the window reaches behind the windowed read). The simulator snapshots on Mondays and
    the splits start on Tuesdays; with ``tuesdays`` some snapshots lie exactly on a split's
    first day, which a read bounded on both ends must leave to that split."""
    if tuesdays:  # a week earlier and a day later: a Tuesday, keys still unique
        moved = batch.index % 5 == 0
        batch = batch.assign(snapshot_date=batch["snapshot_date"].where(
            ~moved, batch["snapshot_date"] - pd.Timedelta(days=6)))
    history = CustomerHistory(tmp_path / "history")
    one_shot(history, batch)
    as_of = pd.Timestamp(as_of)
    stored = load_training_history(history, SPEC, WindowPlan(), as_of)
    stored[LABEL] = churn_label(stored[SPEC.target_column], SPEC)
    try:
        expected = split_by_time(stored, SPEC, WindowPlan(), as_of)
    except NotEnoughHistory as exc:
        with pytest.raises(NotEnoughHistory) as info:
            load_modeling_frames(history, SPEC, WindowPlan(), as_of)
        assert str(info.value) == str(exc)
        return
    got = load_modeling_frames(history, SPEC, WindowPlan(), as_of)
    for name in ("train", "validation", "holdout"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(expected, name))
    assert (got.held_back_rows, got.label_cutoff, got.as_of) == (
        expected.held_back_rows, expected.label_cutoff, expected.as_of)


def _spoil_newest_week(batch: pd.DataFrame) -> pd.DataFrame:
    """One bad row in the newest week: the last chunk."""
    bad = batch.copy()
    row = bad.index[bad["snapshot_date"] == bad["snapshot_date"].max()][0]
    bad.loc[row, "seats"] = math.inf
    bad["churned_within_28d"] = bad["churned_within_28d"].astype(str)
    bad.loc[row, "churned_within_28d"] = "maybe"
    return bad


def test_a_bad_row_in_the_last_chunk_writes_nothing_and_names_it(batch, tmp_path):
    history = CustomerHistory(tmp_path / "history")
    history.upsert(batch.iloc[:50], SPEC.key_columns, state={"watermark": "before"})
    before = history_snapshot(tmp_path)
    bad = _spoil_newest_week(batch)
    with pytest.raises(RecordValidationError) as expected:
        validate_records(bad, SPEC)
    with pytest.raises(RecordValidationError) as got:
        store_batch(history, bad, SPEC, STATE, chunk_rows=700)
    assert str(got.value) == str(expected.value)
    assert "'seats' failed finite" in str(got.value) and "'maybe'" in str(got.value)
    pd.testing.assert_frame_equal(got.value.failure_cases, expected.value.failure_cases)
    assert history_snapshot(tmp_path) == before
    assert history.state() == {"watermark": "before"}


def test_a_column_empty_in_one_week_only_is_judged_on_the_whole_batch(batch, tmp_path):
    """not_all_missing asks about the batch: a chunk where a column is empty is no error."""
    oldest = batch["snapshot_date"] == batch["snapshot_date"].min()
    sparse = batch.assign(discount_share=batch["discount_share"].where(~oldest))
    whole, chunked = CustomerHistory(tmp_path / "whole"), CustomerHistory(tmp_path / "chunked")
    assert store_batch(chunked, sparse, SPEC, STATE, chunk_rows=700) == one_shot(whole, sparse)
    pd.testing.assert_frame_equal(chunked.load(), whole.load())


def test_clean_features_refuses_a_multi_week_export_with_a_bad_row_in_its_last_chunk(
        home, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "CHUNK_ROWS", 2000)
    assert run_graph(home, simulator(FIRST_WEEK)).success
    before = history_snapshot(home)
    frame = simulate(SimulatorSettings(n_customers=1000), "2026-05-11")
    export = tmp_path / "export.csv"
    _spoil_newest_week(frame).to_csv(export, index=False)
    result = run_graph(home, FileSource(path=str(export)))
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [f.step_key for f in failures] == ["clean_features"]
    assert "'seats' failed finite" in str(failures[0].event_specific_data.error)
    assert history_snapshot(home) == before


@pytest.mark.parametrize("extra", [None, "mixed object column"])
def test_a_raw_batch_comes_back_from_its_pickle_unchanged(batch, extra):
    """raw_customers' output is pickled between steps (as Parquet when that is exact)."""
    import pickle

    from churn_assets.defs.data import RawBatch

    frame = batch.set_axis(batch.index * 7)  # an index that is not 0..n-1 survives too
    if extra:  # Parquet would turn 1 and "1" into one type: this frame is pickled as is
        frame = frame.assign(note=[1, "1", None] * (len(frame) // 3) + [2.5] * (len(frame) % 3))
    raw = RawBatch(frame, "w", AS_OF, "simulator")
    back = pickle.loads(pickle.dumps(raw, protocol=4))  # Dagster's PICKLE_PROTOCOL
    pd.testing.assert_frame_equal(back.records, frame, check_exact=True)
    assert [type(v) for v in back.records.iloc[:4, -1]] == [type(v) for v in frame.iloc[:4, -1]]
    assert (back.watermark, back.as_of, back.source) == ("w", AS_OF, "simulator")


def test_training_frames_come_back_from_their_pickle_unchanged_and_small():
    """clean_features' output is pickled for every training step: as Parquet, so the
    pickle is not a second copy of the frames, and the frames (and so the training
    fingerprint) come back exactly."""
    import pickle

    from churn_assets.core.training import training_fingerprint
    from churn_assets.devtools.sample_models import sample_frames

    frames = sample_frames(n_customers=300)
    frames.validation.loc[frames.validation.index[:3], "plan"] = None  # missing text survives
    data = pickle.dumps(frames, protocol=4)  # Dagster's PICKLE_PROTOCOL
    back = pickle.loads(data)
    for name in ("train", "embargo", "validation", "holdout"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(frames, name), check_exact=True)
    assert (back.as_of, back.label_cutoff, back.held_back_rows, back.serving_start) == (
        frames.as_of, frames.label_cutoff, frames.held_back_rows, frames.serving_start)
    assert training_fingerprint(back, SPEC, ["x"], 1, "v") == training_fingerprint(frames, SPEC, ["x"], 1, "v")
    in_memory = sum(f.memory_usage(deep=True).sum() for f in frames.frames)
    # Four frames, each a Parquet file with its magic bytes at both ends.
    assert data.count(b"PAR1") == 8 and len(data) < in_memory / 3


def test_training_frames_that_parquet_would_change_are_pickled_as_they_are():
    import pickle

    from churn_assets.devtools.sample_models import sample_frames

    frames = sample_frames(n_customers=300)
    frames.holdout = frames.holdout.assign(note=[1, "1"] * (len(frames.holdout) // 2) + ["x"] * (len(frames.holdout) % 2))
    back = pickle.loads(pickle.dumps(frames, protocol=4))
    assert b"PAR1" not in pickle.dumps(frames, protocol=4)
    assert [type(v) for v in back.holdout["note"].iloc[:2]] == [int, str]
    pd.testing.assert_frame_equal(back.train, frames.train, check_exact=True)


def test_default_chunking_validates_small_batches_once_and_large_ones_by_weeks(monkeypatch):
    """Up to ONE_FRAME_CHUNKS chunks' rows a batch is one frame (no second pass); above,
    whole weeks of about CHUNK_ROWS rows."""
    batch = simulate(SimulatorSettings(n_customers=300), "2026-05-11")
    monkeypatch.setattr(validation, "CHUNK_ROWS", len(batch) // validation.ONE_FRAME_CHUNKS + 1)
    assert [last for _, last in validated_chunks(batch, SPEC)] == [True]
    monkeypatch.setattr(validation, "CHUNK_ROWS", len(batch) // (validation.ONE_FRAME_CHUNKS + 1))
    chunks = list(validated_chunks(batch, SPEC))
    assert len(chunks) > validation.ONE_FRAME_CHUNKS
    assert sum(len(c) for c, _ in chunks) == len(batch)

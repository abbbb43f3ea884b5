"""Data assets: collect new customer records, validate them, keep the history."""

import datetime as dt
import os
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from pydantic import Field

from churn_assets.defs.decisions import DecisionLog, already_decided, coverage_of
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules, TrainingPlan
from churn_assets.defs.scores import RiskList
from churn_assets.sources.base import (CustomerSource, SourceError, TransientSourceError, column_changes,
                                       describe_column_changes, expected_columns)
from churn_assets.core.redaction import redact
from churn_assets.core.frame_pickle import frame_from_parquet, parquet_bytes
from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.training import NotEnoughHistory
from churn_assets.defs.window import load_modeling_frames
from churn_assets.core.validation import RecordValidationError, validated_chunks
from churn_assets.storage.faults import fault_of
from churn_assets.storage.history import CustomerHistory, UpsertSummary


class RefreshConfig(dg.Config):
    """Run config of ``raw_customers``: values that belong to one run, not to the code location."""

    as_of: str = Field("", description="The data's 'today' (YYYY-MM-DD): snapshots within the"
                                       " label horizon before it have provisional labels. Empty:"
                                       " the source's default (the real date for live sources).")

    def as_of_timestamp(self) -> pd.Timestamp | None:
        """The run's "today", or None for the source's default; a bad date fails the step
        once (a configuration error: the RetryPolicy is for transient source faults)."""
        if not self.as_of:
            return None
        try:
            return pd.Timestamp(dt.date.fromisoformat(self.as_of))
        except ValueError:
            raise dg.Failure(description=f"raw_customers config: as_of must be a date YYYY-MM-DD,"
                                         f" not {self.as_of!r}", allow_retries=False) from None


@dataclass
class RawBatch:
    """Records a source delivered in one run, before validation."""

    records: pd.DataFrame
    watermark: str | None
    as_of: pd.Timestamp
    source: str

    def __reduce__(self):
        # As Parquet where that is exact (core.frame_pickle): protocol 4 would copy the
        # whole batch (4.9 GiB at a 10 M-row window) while pickling it.
        fields = (self.watermark, self.as_of, self.source)
        packed = parquet_bytes(self.records)
        if packed is None:
            return RawBatch, (self.records, *fields)
        return _raw_batch_from_parquet, (packed, *fields)


def _raw_batch_from_parquet(data: bytes, *fields) -> RawBatch:
    return RawBatch(frame_from_parquet(data), *fields)


@dataclass
class _NoUpsert:
    """Row counts of a run that re-evaluated the stored history without a new batch."""

    total_rows: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def _preview(frame: pd.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(md_table(frame.head(rows).to_dict("records")))


@dg.asset(
    group_name="churn",
    kinds={"pandas"},
    output_required=False,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
)
def raw_customers(context: dg.AssetExecutionContext, config: RefreshConfig,
                  customer_source: dg.ResourceParam[CustomerSource],
                  storage: ChurnStorage, training_plan: TrainingPlan,
                  gate_rules: DeploymentGateRules, risk_list: RiskList):
    """New or changed customer snapshots since the stored watermark, as the source sent them.

    The batch is kept in the landing folder as received. It enters the customer history
    only once ``clean_features`` has validated it, so bad data never reaches the history.
    With nothing new the asset is not materialized and the rest of the graph is skipped,
    unless the stored history holds labelled data no deploy decision has covered yet
    (``defs.decisions``): then an empty batch goes on and the graph retrains.
    """
    if risk_list.sql_url_env and not os.environ.get(risk_list.sql_url_env):
        # Found here, before anything is fetched, stored or trained: found in churn_scores,
        # it would stop the run after the deploy, and the re-run would skip the list.
        raise dg.Failure(description=f"the environment variable {risk_list.sql_url_env} ([scores]"
                                     " sql_url_env) is not set; it must hold the URL of the database"
                                     " the risk list is written to", allow_retries=False)
    spec = training_plan.feature_spec()
    watermark = storage.history().state().get("watermark")
    try:
        batch = customer_source.fetch(spec, watermark, as_of=config.as_of_timestamp())
    except TransientSourceError as exc:
        # The source's own retries ran out; the RetryPolicy above tries again later.
        raise dg.Failure(description=redact(str(exc)), allow_retries=True) from None
    except SourceError as exc:
        # Bad token, wrong URL, broken contract: retrying cannot help, so fail at once.
        raise dg.Failure(description=redact(str(exc)), allow_retries=False) from None
    except (ValueError, TypeError, KeyError) as exc:
        # A configuration or data-shape mistake: the RetryPolicy is for transient faults only.
        # Messages go to the run database and to Slack: no URL credentials in them.
        raise dg.Failure(description=redact(f"{customer_source.describe()}: {type(exc).__name__}: {exc}"),
                         allow_retries=False) from None
    # The description goes to metadata, the history's state.json and logs: no credentials.
    batch.description = redact(batch.description)
    if batch.records.empty:
        # No new records does not mean nothing to do: a run killed after clean_features
        # stored the last batch (and moved the watermark) left labelled history that no
        # gate decision has covered yet. Retrain exactly then, and only then.
        undecided = _undecided_history(storage, training_plan, gate_rules, batch.as_of)
        if undecided is None:
            message = (f"no new customer records since watermark {watermark} ({batch.description});"
                       " nothing to retrain")
            context.log.info(message)
            context.log_event(dg.AssetObservation(
                asset_key=context.asset_key,
                metadata={"new_records": 0, "watermark": str(watermark), "status": message}))
            return
        message = (f"no new customer records since watermark {watermark}, but the stored history"
                   f" has labelled data up to {undecided['newest_final_snapshot']} that no deploy"
                   " decision covered (an earlier run stopped before deciding); retraining")
        context.log.info(message)
        yield dg.Output(RawBatch(batch.records, watermark, batch.as_of, batch.description),
                        metadata={"records": 0, "source": batch.description,
                                  "previous_watermark": str(watermark),
                                  "new_watermark": str(watermark),
                                  "as_of": str(batch.as_of.date()), "status": message})
        return
    drift = column_changes(list(batch.records.columns), expected_columns(spec, customer_source),
                           storage.history().columns())
    if drift["new_source_columns"] or drift["vanished_source_columns"]:
        context.log.warning(describe_column_changes(drift))
    try:
        landed = storage.land(batch.records, context.run.run_id)  # as sent, every column
    except OSError as exc:
        line = fault_of(exc, storage.root)
        if line is None:
            raise
        # A full, read-only or foreign data directory: the RetryPolicy cannot fix it.
        raise dg.Failure(description=line, allow_retries=False) from None
    # The history's columns are those of its first batch: a column no model uses that
    # appears later stays in the landed batch only (the history would refuse it).
    records = batch.records.drop(columns=drift["source_columns_not_stored"])
    yield dg.Output(
        RawBatch(records, batch.watermark, batch.as_of, batch.description),
        metadata={
            "records": len(batch.records),
            "source": batch.description,
            "previous_watermark": str(watermark),
            "new_watermark": str(batch.watermark),
            "as_of": str(batch.as_of.date()),
            "landed_at": dg.MetadataValue.path(str(landed)),
            "preview": _preview(batch.records),
            **{key: dg.MetadataValue.json(value) for key, value in drift.items()},
        },
    )


def store_batch(history: CustomerHistory, records: pd.DataFrame, spec: FeatureSpec,
                state: dict, chunk_rows: int | None = None) -> UpsertSummary:
    """Validate ``records`` and upsert them, in chunks of whole snapshot weeks (about
    ``chunk_rows`` rows, default ``validation.CHUNK_ROWS``); raises
    ``RecordValidationError`` with nothing written if any row is bad.

    Every chunk is validated before the first is stored (``validated_chunks``), and the
    watermark goes with the last chunk, so a crash between chunks leaves it old and the
    next run re-fetches the batch (the upsert is idempotent). Each upsert rewrites only
    its chunk's weeks, so per-chunk upserts give the history a one-shot upsert would.
    """
    received = inserted = updated = unchanged = total = 0
    for valid, last in validated_chunks(records, spec, chunk_rows):
        part = history.upsert(valid.drop(columns=[LABEL]), spec.key_columns,
                              state=state if last else None)
        del valid
        received += part.received
        inserted += part.inserted
        updated += part.updated
        unchanged += part.unchanged
        total = part.total_rows
    return UpsertSummary(received, inserted, updated, unchanged, total)


def _undecided_history(storage: ChurnStorage, training_plan: TrainingPlan,
                       gate_rules: DeploymentGateRules, as_of: pd.Timestamp) -> dict | None:
    """The coverage of the stored history at ``as_of`` if no deploy decision covers it yet."""
    spec = training_plan.feature_spec()
    try:
        frames = load_modeling_frames(storage.history(), spec, training_plan.window_plan(), as_of)
    except NotEnoughHistory:
        return None  # nothing a model could be trained on yet
    if frames is None:
        return None
    coverage = coverage_of(frames, spec)
    if already_decided(storage.root, coverage, spec, gate_rules.gate_rules()):
        return None
    return coverage


@dg.asset(group_name="churn", kinds={"pandas", "pandera"}, output_required=False)
def clean_features(context: dg.AssetExecutionContext, raw_customers: RawBatch,
                   storage: ChurnStorage, training_plan: TrainingPlan,
                   gate_rules: DeploymentGateRules):
    """The batch validated against the feature spec, upserted into the history, and the
    history cut by time into train / validation / holdout weeks.

    A batch that fails validation changes nothing: the history and watermark stay as
    they were, and the error names every failing column and check.

    Whether the rest of the graph retrains depends on the history, not on the batch: when
    the last deploy decision (deployed or refused, ``defs.decisions``) was made on exactly
    these labelled rows with this code and spec, the asset is not materialized and nothing
    downstream runs (a file source re-read, a week with only provisional rows). Otherwise
    it records what this run evaluates, so a kill before the decision retrains next time.
    """
    spec = training_plan.feature_spec()
    history = storage.history()
    if raw_customers.records.empty:
        summary = None  # an undecided history re-evaluated (raw_customers says why)
    else:
        try:
            summary = store_batch(history, raw_customers.records, spec, state={
                "watermark": raw_customers.watermark, "as_of": str(raw_customers.as_of),
                "source": raw_customers.source})
        except RecordValidationError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"failure_cases": dg.MetadataValue.md(
                    md_table(exc.failure_cases.head(50).to_dict("records")))},
                allow_retries=False,
            ) from exc
        # The batch is in the history now. Dagster keeps a step's inputs until the step
        # ends, so drop the frame here: a first refresh's batch is as large as the window
        # read below, and would otherwise add to its peak.
        raw_customers.records = raw_customers.records.iloc[:0]
    try:
        frames = load_modeling_frames(history, spec, training_plan.window_plan(), raw_customers.as_of)
        if frames is None:
            raise NotEnoughHistory("the history is empty")
    except NotEnoughHistory as exc:
        raise dg.Failure(description=f"not enough labelled history yet: {exc}", allow_retries=False) from exc
    coverage = coverage_of(frames, spec)
    decided = already_decided(storage.root, coverage, spec, gate_rules.gate_rules())
    if decided:
        received = summary.received if summary else 0
        changed = summary.changed if summary else 0
        message = (f"the batch of {received} records changed {changed} stored rows, and {decided};"
                   " nothing to retrain")
        context.log.info(message)
        context.log_event(dg.AssetObservation(asset_key=context.asset_key,
                                              metadata={"changed_rows": changed, "status": message}))
        return
    # Before training starts: a kill from here on leaves this record without an outcome,
    # so the next run retrains instead of skipping (issue 8).
    DecisionLog(storage.root).record_evaluation(context.run.run_id, coverage)
    counts = {"train": len(frames.train), "validation": len(frames.validation),
              "holdout": len(frames.holdout)}
    if summary is None:
        summary = _NoUpsert(total_rows=history.total_rows())
    context.log.info(f"history {summary.total_rows} rows; {summary.inserted} new, "
                     f"{summary.updated} updated; held back {frames.held_back_rows} with open labels")
    yield dg.Output(
        frames,
        metadata={
            "inserted_rows": summary.inserted,
            "updated_rows": summary.updated,
            "unchanged_rows": summary.unchanged,
            "history_rows": summary.total_rows,
            "held_back_rows_label_window_open": frames.held_back_rows,
            "label_horizon_days": spec.label_horizon_days,
            "rows": dg.MetadataValue.json(counts),
            "data_window": dg.MetadataValue.json(frames.window(spec)),
            "churn_rate_train": float(frames.train[LABEL].mean()),
            "churn_rate_holdout": float(frames.holdout[LABEL].mean()),
            "newest_final_snapshot": str(coverage["newest_final_snapshot"]),
            "data_signature": coverage["signature"][:16],
        },
    )


"""Data assets: collect new customer records, validate them, keep the history."""

import datetime as dt
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator

from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.sources.base import CustomerSource, SourceError, TransientSourceError
from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL, churn_label
from churn_assets.core.training import NotEnoughHistory, split_by_time
from churn_assets.core.validation import RecordValidationError, validate_records
from churn_assets.core.code_version import code_version


class RefreshConfig(dg.Config):
    """Run config of ``raw_customers``: values that belong to one run, not to the code location."""

    as_of: str = Field("", description="The data's 'today' (YYYY-MM-DD): snapshots within the"
                                       " label horizon before it have provisional labels. Empty:"
                                       " the source's default (the real date for live sources).")

    @field_validator("as_of")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        if value:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"as_of must be a date YYYY-MM-DD, not {value!r}") from None
        return value

    def as_of_timestamp(self) -> pd.Timestamp | None:
        return pd.Timestamp(self.as_of) if self.as_of else None


@dataclass
class RawBatch:
    """Records a source delivered in one run, before validation."""

    records: pd.DataFrame
    watermark: str | None
    as_of: pd.Timestamp
    source: str


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
                  storage: ChurnStorage, training_plan: TrainingPlan):
    """New or changed customer snapshots since the stored watermark, as the source sent them.

    The batch is kept in the landing folder as received. It enters the customer history
    only once ``clean_features`` has validated it, so bad data never reaches the history.
    With nothing new the asset is not materialized and the rest of the graph is skipped.
    """
    spec = training_plan.feature_spec()
    watermark = storage.history().state().get("watermark")
    try:
        batch = customer_source.fetch(spec, watermark, as_of=config.as_of_timestamp())
    except TransientSourceError as exc:
        # The source's own retries ran out; the RetryPolicy above tries again later.
        raise dg.Failure(description=str(exc), allow_retries=True) from None
    except SourceError as exc:
        # Bad token, wrong URL, broken contract: retrying cannot help, so fail at once.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except (ValueError, TypeError, KeyError) as exc:
        # A configuration or data-shape mistake: the RetryPolicy is for transient faults only.
        raise dg.Failure(description=f"{customer_source.describe()}: {type(exc).__name__}: {exc}",
                         allow_retries=False) from None
    if batch.records.empty:
        message = f"no new customer records since watermark {watermark} ({batch.description}); nothing to retrain"
        context.log.info(message)
        context.log_event(dg.AssetObservation(
            asset_key=context.asset_key,
            metadata={"new_records": 0, "watermark": str(watermark), "status": message}))
        return
    landed = storage.land(batch.records, context.run.run_id)
    yield dg.Output(
        RawBatch(batch.records, batch.watermark, batch.as_of, batch.description),
        metadata={
            "records": len(batch.records),
            "source": batch.description,
            "previous_watermark": str(watermark),
            "new_watermark": str(batch.watermark),
            "as_of": str(batch.as_of.date()),
            "landed_at": dg.MetadataValue.path(str(landed)),
            "preview": _preview(batch.records),
        },
    )


def _production_matches_code(storage: ChurnStorage, spec) -> bool:
    """True when production was trained by this code on this spec: nothing to retrain for."""
    production = storage.registry().production()
    return (production is not None
            and production.manifest.get("code_version") == code_version()
            and production.manifest.get("feature_spec") == spec.to_dict())


@dg.asset(group_name="churn", kinds={"pandas", "pandera"}, output_required=False)
def clean_features(context: dg.AssetExecutionContext, raw_customers: RawBatch,
                   storage: ChurnStorage, training_plan: TrainingPlan):
    """The batch validated against the feature spec, upserted into the history, and the
    history cut by time into train / validation / holdout weeks.

    A batch that fails validation changes nothing: the history and watermark stay as
    they were, and the error names every failing column and check. A batch that changes
    no stored row (a file source re-read), with production trained by this code on this
    spec, is not materialized, so nothing downstream retrains.
    """
    spec = training_plan.feature_spec()
    try:
        valid = validate_records(raw_customers.records, spec)
    except RecordValidationError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"failure_cases": dg.MetadataValue.md(
                md_table(exc.failure_cases.head(50).to_dict("records")))},
            allow_retries=False,
        ) from exc
    history = storage.history()
    summary = history.upsert(
        valid.drop(columns=[LABEL]), spec.key_columns,
        state={"watermark": raw_customers.watermark, "as_of": str(raw_customers.as_of),
               "source": raw_customers.source},
    )
    if summary.changed == 0 and _production_matches_code(storage, spec):
        message = (f"the batch of {summary.received} records changed no stored row and production"
                   " was trained by this code on this spec; nothing to retrain")
        context.log.info(message)
        context.log_event(dg.AssetObservation(asset_key=context.asset_key,
                                              metadata={"changed_rows": 0, "status": message}))
        return
    stored = history.load()
    stored[LABEL] = churn_label(stored[spec.target_column], spec)
    try:
        frames = split_by_time(stored, spec, training_plan.window_plan(), raw_customers.as_of)
    except NotEnoughHistory as exc:
        raise dg.Failure(description=f"not enough labelled history yet: {exc}", allow_retries=False) from exc
    counts = {"train": len(frames.train), "validation": len(frames.validation),
              "holdout": len(frames.holdout)}
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
        },
    )


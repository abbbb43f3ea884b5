"""Evaluation: challenger and champion scored on the same holdout rows, in the same run."""

import math

import dagster as dg

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.evaluation import EvaluationReport
from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES, churn_metrics
from churn_assets.storage.registry import RegistryError
from churn_assets.core.markdown import md_table
from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.core.spec import LABEL
from churn_assets.core.training import ModelingFrames


def comparison_rows(challenger: dict, champion: dict | None) -> list[dict]:
    rows = []
    for name in METRIC_NAMES:
        new = challenger.get(name, math.nan)
        old = None if champion is None else champion.get(name, math.nan)
        delta = None if old is None else new - old
        better = None if delta is None or math.isnan(delta) else (
            delta >= 0 if name in HIGHER_IS_BETTER else delta <= 0)
        rows.append({"metric": name, "challenger": new,
                     "champion": "-" if old is None else old,
                     "delta": "-" if delta is None else delta,
                     "challenger better or equal": "-" if better is None else ("yes" if better else "no")})
    return rows


@dg.asset(group_name="churn", kinds={"sklearn"})
def evaluation_report(context: dg.AssetExecutionContext, clean_features: ModelingFrames,
                      churn_model: ChurnPredictor, storage: ChurnStorage,
                      training_plan: TrainingPlan) -> dg.MaterializeResult[EvaluationReport]:
    """Holdout metrics of the challenger and of the production model (the champion),
    both computed now on the same rows; stored metrics are never trusted for this."""
    spec = training_plan.feature_spec()
    holdout = clean_features.holdout
    y_true = holdout[LABEL].to_numpy()
    challenger = churn_metrics(y_true, churn_model.predict_proba(holdout), churn_model.threshold)
    registry = storage.registry()
    production = registry.production()
    champion, champion_info = None, None
    if production is not None:
        try:
            champion_model = registry.load(production)
        except RegistryError as exc:
            raise dg.Failure(description=f"cannot score the champion {production.version}: {exc}",
                             allow_retries=False) from exc
        try:
            champion_proba = champion_model.predict_proba(holdout)
        except KeyError as exc:
            raise dg.Failure(description=f"champion {production.version} cannot score this holdout: {exc}",
                             allow_retries=False) from exc
        champion = churn_metrics(y_true, champion_proba, champion_model.threshold)
        champion_info = {"version": production.version, "family": champion_model.family,
                         "fingerprint": champion_model.fingerprint}
    report = EvaluationReport(
        challenger=challenger,
        champion=champion,
        champion_version=champion_info["version"] if champion_info else None,
        champion_fingerprint=champion_info["fingerprint"] if champion_info else None,
        challenger_fingerprint=churn_model.fingerprint,
        holdout_rows=int(len(holdout)),
        holdout_churn_rate=float(y_true.mean()),
        data_window=clean_features.window(spec),
        model_family=churn_model.family,
        threshold=churn_model.threshold,
    )
    metadata = {
        "comparison": dg.MetadataValue.md(md_table(comparison_rows(challenger, champion))),
        "champion_version": str(report.champion_version),
        "holdout_rows": report.holdout_rows,
        "training_rows": len(clean_features.training_window),
        "data_window": dg.MetadataValue.json(report.data_window),
        "model_family": churn_model.family,
        "champion_family": champion_info["family"] if champion_info else "none (bootstrap)",
    }
    # Plain floats, one per metric, so the UI charts them across runs.
    for name, value in challenger.items():
        metadata[f"challenger_{name}"] = float(value)
    for name, value in (champion or {}).items():
        metadata[f"champion_{name}"] = float(value)
    return dg.MaterializeResult(value=report, metadata=metadata)

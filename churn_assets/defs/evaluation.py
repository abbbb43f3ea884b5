"""Evaluation: challenger and champion scored on the same holdout rows, in the same run."""

import dagster as dg

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.evaluation import EvaluationReport
from churn_assets.core.metrics import churn_metrics
from churn_assets.storage.registry import RegistryError
from churn_assets.core.markdown import md_table
from churn_assets.defs import reporting
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules, TrainingPlan
from churn_assets.core.spec import LABEL
from churn_assets.core.training import ModelingFrames
from churn_assets.health.plots import png_markdown

PLOT_TITLES = {"roc_pr": "ROC and precision-recall, challenger vs champion",
               "reliability": "Reliability diagram", "confusion_matrix": "Confusion matrix at the tuned threshold",
               "feature_importance": "Permutation feature importance (holdout, raw features)",
               "roc_auc_trend": "ROC AUC by model version"}


def plot_metadata(plots: dict[str, bytes]) -> dict:
    """One markdown entry per plot, the PNG inlined, so the asset page shows it."""
    return {f"plot_{name}": dg.MetadataValue.md(f"**{PLOT_TITLES.get(name, name)}**\n\n"
                                                + png_markdown(png, PLOT_TITLES.get(name, name)))
            for name, png in plots.items()}


def _score_champion(registry, production, holdout):
    try:
        champion_model = registry.load(production)
    except RegistryError as exc:
        raise dg.Failure(description=f"cannot score the champion {production.version}: {exc}",
                         allow_retries=False) from exc
    try:
        return champion_model, champion_model.predict_proba(holdout)
    except KeyError as exc:
        raise dg.Failure(description=f"champion {production.version} cannot score this holdout: {exc}",
                         allow_retries=False) from exc


@dg.asset(group_name="churn", kinds={"sklearn"})
def evaluation_report(context: dg.AssetExecutionContext, clean_features: ModelingFrames,
                      churn_model: ChurnPredictor, storage: ChurnStorage, training_plan: TrainingPlan,
                      gate_rules: DeploymentGateRules) -> dg.MaterializeResult[EvaluationReport]:
    """Holdout metrics of the challenger and of the production model (the champion),
    both computed now on the same rows; stored metrics are never trusted for this.

    Also: the paired difference of each key metric with its 95% interval (DeLong for
    ROC AUC, a seeded paired bootstrap for the rest), calibration error, and the
    diagnostic plots (ROC/PR, reliability, confusion matrix, feature importance, the
    ROC AUC trend across versions), inlined in the metadata.
    """
    spec = training_plan.feature_spec()
    holdout = clean_features.holdout
    y_true = holdout[LABEL].to_numpy().astype(int)
    proba = churn_model.predict_proba(holdout)
    challenger = churn_metrics(y_true, proba, churn_model.threshold)
    registry = storage.registry()
    production = registry.production()
    champion, champion_model, champion_proba, comparisons = None, None, None, {}
    if production is not None:
        champion_model, champion_proba = _score_champion(registry, production, holdout)
        champion = churn_metrics(y_true, champion_proba, champion_model.threshold)
        if len(set(y_true.tolist())) == 2:  # a paired interval needs both classes
            comparisons = reporting.paired_comparisons(y_true, proba, champion_proba, churn_model.threshold,
                                                       champion_model.threshold, seed=0)
    calibration = reporting.calibration_errors(y_true, proba, champion_proba)
    importance = reporting.importance_rows(churn_model, holdout, y_true)
    # The gate's verdict is the check's to give; here it only marks this run's point
    # on the trend chart as promoted or refused.
    verdict = reporting.gate_verdict(challenger, champion, gate_rules.gate_rules(), comparisons)
    trend = reporting.trend_points(registry, current={
        "version": "this run", "roc_auc": challenger["roc_auc"], "deployed": verdict.passed,
        "champion_roc_auc": None if champion is None else champion["roc_auc"]})
    plots = reporting.evaluation_plots(y_true, proba, champion_proba, churn_model.threshold, importance, trend)
    report = EvaluationReport(
        challenger=challenger,
        champion=champion,
        champion_version=production.version if production else None,
        champion_fingerprint=champion_model.fingerprint if champion_model else None,
        challenger_fingerprint=churn_model.fingerprint,
        holdout_rows=int(len(holdout)),
        holdout_churn_rate=float(y_true.mean()),
        data_window=clean_features.window(spec),
        model_family=churn_model.family,
        threshold=churn_model.threshold,
        comparisons=comparisons,
        calibration=calibration,
        plots=plots,
        importance=importance[:reporting.IMPORTANCE_TOP],
    )
    context.log.info(f"challenger {churn_model.family} ROC AUC {challenger['roc_auc']:.4f}"
                     + ("" if champion is None else f" vs champion {production.version} {champion['roc_auc']:.4f}"))
    metadata = {
        "comparison": dg.MetadataValue.md(md_table(reporting.comparison_rows(challenger, champion, comparisons))),
        "champion_version": str(report.champion_version),
        "holdout_rows": report.holdout_rows,
        "training_rows": clean_features.training_rows,
        "data_window": dg.MetadataValue.json(report.data_window),
        "model_family": churn_model.family,
        "champion_family": champion_model.family if champion_model else "none (bootstrap)",
        "comparisons": dg.MetadataValue.json(comparisons),
        "top_features": dg.MetadataValue.md(md_table(
            [{"feature": f, "ROC AUC drop": m, "std": s} for f, m, s in report.importance])),
    }
    # Plain floats, one per metric (and delta and interval bound), so the UI charts them.
    metadata.update(reporting.metric_metadata(challenger, champion, comparisons, calibration))
    metadata.update(plot_metadata(plots))
    return dg.MaterializeResult(value=report, metadata=metadata)

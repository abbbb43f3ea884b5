"""Evaluation: challenger and champion scored on the same holdout rows, in the same run."""

import dagster as dg

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.evaluation import (EvaluationReport, calibration_summary, contender,
                                          evaluate_holdout)
from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL
from churn_assets.core.training import ModelingFrames
from churn_assets.defs import reporting
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules, TrainingPlan
from churn_assets.health.plots import png_markdown
from churn_assets.storage.pointer import pin_of
from churn_assets.storage.registry import REPAIR_HINT, RegistryError

PLOT_TITLES = {"roc_pr": "ROC and precision-recall, challenger vs champion",
               "reliability": "Reliability diagram", "confusion_matrix": "Confusion matrix at the tuned threshold",
               "feature_importance": "Permutation feature importance (holdout, raw features)",
               "roc_auc_trend": "ROC AUC by model version"}


def plot_metadata(plots: dict[str, bytes]) -> dict:
    """One markdown entry per plot, the PNG inlined, so the asset page shows it."""
    return {f"plot_{name}": dg.MetadataValue.md(f"**{PLOT_TITLES.get(name, name)}**\n\n"
                                                + png_markdown(png, PLOT_TITLES.get(name, name)))
            for name, png in plots.items()}


def _repair_hint(registry, broken: str) -> str:
    """What to run when production cannot be loaded: roll back to a readable version."""
    older = [v.version for v in registry.versions() if v.version != broken]
    return (f"run `churn-assets rollback --to {older[-1]}` to serve the newest readable version"
            if older else REPAIR_HINT)


def _load_champion(registry, production) -> ChurnPredictor:
    try:
        return registry.load(production)
    except RegistryError as exc:
        raise dg.Failure(description=f"cannot score the champion {production.version}: {exc};"
                                     f" {_repair_hint(registry, production.version)}",
                         allow_retries=False) from exc


def _recent(registry, count: int, context) -> list:
    """The newest ``count`` registered versions as ``Contender``s; unreadable ones skipped."""
    out = []
    for version in registry.versions()[-count:] if count > 0 else []:
        try:
            out.append(contender(version.version, registry.load(version)))
        except RegistryError as exc:
            context.log.warning(f"recent version {version.version} left out of the comparison: {exc}")
    return out


@dg.asset(group_name="churn", kinds={"sklearn"})
def evaluation_report(context: dg.AssetExecutionContext, clean_features: ModelingFrames,
                      churn_model: ChurnPredictor, storage: ChurnStorage, training_plan: TrainingPlan,
                      gate_rules: DeploymentGateRules) -> dg.MaterializeResult[EvaluationReport]:
    """The challenger's evaluated fit and the production model's (the champion), both
    scored now on the same holdout rows, each only on rows clear of its own training
    weeks; stored metrics are never trusted for this (``core.evaluation``).

    Also: the paired difference of each key metric with its 95% interval, grouped by
    customer (DeLong for ROC AUC, a seeded paired bootstrap for the rest), the comparison
    with the best of the recent versions, calibration error beside its noise floor, and
    the diagnostic plots (ROC/PR, reliability, confusion matrix, feature importance, the
    ROC AUC trend across versions), inlined in the metadata.
    """
    spec = training_plan.feature_spec()
    holdout = clean_features.holdout
    y_true = holdout[LABEL].to_numpy().astype(int)
    registry = storage.registry()
    production = registry.production()
    champion_model = None
    champion = None
    if production is not None:
        champion_model = _load_champion(registry, production)
        champion = contender(production.version, champion_model)
    try:
        measured = evaluate_holdout(holdout, spec, churn_model, champion,
                                    _recent(registry, gate_rules.recent_versions, context))
    except KeyError as exc:
        raise dg.Failure(description=f"champion {production.version} cannot score this holdout: {exc}",
                         allow_retries=False) from exc
    evaluated = churn_model.evaluated_fit
    calibration = calibration_summary(measured)
    importance = reporting.importance_rows(evaluated, holdout, y_true)
    report = EvaluationReport(
        challenger=measured.challenger,
        champion=measured.champion,
        champion_version=measured.champion_version,
        champion_fingerprint=champion_model.fingerprint if champion_model else None,
        challenger_fingerprint=churn_model.fingerprint,
        holdout_rows=int(len(holdout)),
        holdout_churn_rate=float(y_true.mean()),
        data_window=clean_features.window(spec),
        model_family=churn_model.family,
        threshold=churn_model.threshold,
        comparisons=measured.comparisons,
        calibration=calibration,
        importance=importance[:reporting.IMPORTANCE_TOP],
        best_recent=measured.best_recent,
        compared_rows=measured.compared_rows,
        uncertainty=measured.uncertainty,
        notes=measured.notes,
    )
    # The gate's verdict is the check's to give; here it marks this run's point on the
    # trend chart and words the page's first line.
    verdict = reporting.gate_verdict(report, gate_rules.gate_rules())
    prospective = registry.next_version()
    held = bool(pin_of(registry.production_pointer()))  # a passing challenger waits for `unpin`
    as_of = report.data_window.get("as_of") if isinstance(report.data_window, dict) else None
    trend = reporting.trend_points(registry, current={
        "version": "this run", "roc_auc": measured.challenger["roc_auc"], "deployed": verdict.passed and not held,
        "held": held, "as_of": as_of,
        "champion_roc_auc": None if measured.champion is None else measured.champion["roc_auc"]})
    compared = measured.compared_mask
    rows = slice(None) if compared is None else compared
    plots = reporting.evaluation_plots(
        y_true[rows], measured.proba[rows], None if compared is None else measured.champion_proba[rows],
        churn_model.threshold, importance, trend)
    report = EvaluationReport(**{**report.__dict__, "plots": plots})
    for note in measured.notes:
        context.log.warning(note)
    context.log.info(f"challenger {churn_model.family} ROC AUC {measured.challenger['roc_auc']:.4f}"
                     + ("" if measured.champion is None else
                        f" vs champion {production.version} {measured.champion['roc_auc']:.4f}"
                        f" on {measured.compared_rows} rows clear of both"))
    summary = reporting.summary_line(
        churn_model.family, prospective, report.champion_version, verdict, measured.comparisons,
        measured.best_recent, held=held,
        identical=production is not None and production.manifest.get("fingerprint") == churn_model.fingerprint)
    metadata = {
        "summary": dg.MetadataValue.md(f"**{summary}**"),
        "comparison": dg.MetadataValue.md(md_table(reporting.comparison_rows(
            measured.challenger, measured.champion, measured.comparisons))),
        # Plain floats of the gate's metrics, first in the UI's Plots tab (keys "1_roc_auc", ...).
        **reporting.metric_metadata(measured.challenger, measured.champion, measured.comparisons),
        "champion_version": str(report.champion_version),
        "prospective_version": prospective,
        "holdout_rows": report.holdout_rows,
        "compared_rows": measured.compared_rows,
        "training_rows": clean_features.training_rows,
        "data_window": dg.MetadataValue.json(report.data_window),
        "model_family": churn_model.family,
        "champion_family": champion_model.family if champion_model else "none (bootstrap)",
        "metrics": dg.MetadataValue.json({"challenger": measured.challenger, "champion": measured.champion,
                                          "calibration": calibration, "uncertainty": measured.uncertainty}),
        "comparisons": dg.MetadataValue.json(measured.comparisons),
        "best_recent": dg.MetadataValue.json(measured.best_recent or {}),
        "calibration": dg.MetadataValue.md(md_table(reporting.calibration_rows(calibration))),
        "top_features": dg.MetadataValue.md(md_table(
            [{"feature": f, "ROC AUC drop": round(m, 4), "std": round(s, 4)} for f, m, s in report.importance])),
    }
    metadata.update(plot_metadata(plots))
    return dg.MaterializeResult(value=report, metadata=rounded_metadata(metadata))


def rounded_metadata(metadata: dict) -> dict:
    """``metadata`` with its floats, plain or inside JSON values, rounded to
    ``reporting.DIGITS`` decimals: a page shows 0.8123, never 0.8123456789012345."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, dg.JsonMetadataValue):
            value = dg.MetadataValue.json(reporting.rounded(value.data))
        elif isinstance(value, dg.FloatMetadataValue):
            value = dg.MetadataValue.float(reporting.rounded(value.value))
        elif isinstance(value, (float, dict, list)):
            value = reporting.rounded(value)
        out[key] = value
    return out

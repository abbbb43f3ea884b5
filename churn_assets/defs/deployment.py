"""Deployment: promote the challenger in the registry, only on a passing gate verdict."""

import dagster as dg

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.evaluation import EvaluationReport
from churn_assets.defs import reporting
from churn_assets.defs.checks import record_refusal, verdict_for, verdict_metadata
from churn_assets.defs.decisions import record_run_outcome
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules
from churn_assets.health.plots import metric_trend


@dg.asset(group_name="churn", kinds={"sklearn"})
def deployed_model(context: dg.AssetExecutionContext, evaluation_report: EvaluationReport,
                   churn_model: ChurnPredictor, storage: ChurnStorage,
                   gate_rules: DeploymentGateRules) -> dg.MaterializeResult:
    """The production model version in the registry, with its model card.

    Re-applies the gate itself: a blocking check protects only runs that include it,
    and ``--select deployed_model`` would not. A refused challenger is recorded in
    ``registry/candidates.jsonl``. A challenger trained on exactly the data, config and
    code of the production model is not registered again. A new version gets ``card.md``
    and the evaluation's plots beside its ``manifest.json``.
    """
    verdict = verdict_for(evaluation_report, gate_rules)
    if not verdict.passed:
        record_refusal(storage, evaluation_report, verdict, context.run.run_id, "deployed_model",
                       gate_rules.gate_rules())
        raise dg.Failure(description=f"deployment refused by the gate: {verdict.summary}",
                         metadata=verdict_metadata(verdict), allow_retries=False)
    if evaluation_report.challenger_fingerprint != churn_model.fingerprint:
        raise dg.Failure(description="evaluation_report was computed for a different churn_model;"
                                     " materialize both together", allow_retries=False)
    registry = storage.registry()
    production = registry.production()
    current = production.version if production else None
    if current != evaluation_report.champion_version:
        raise dg.Failure(description=f"production moved from {evaluation_report.champion_version}"
                                     f" to {current} after evaluation; re-run the evaluation",
                         allow_retries=False)
    if production is not None and production.manifest.get("fingerprint") == churn_model.fingerprint:
        context.log.info(f"challenger is identical to production {current} (same data, config, code);"
                         " no new version")
        record_run_outcome(storage.root, context.run, "deployed", version=current)  # issue 8
        return dg.MaterializeResult(metadata={"production_version": current, "new_version": False,
                                              "verdict": verdict.summary})
    manifest = {
        "model_family": churn_model.family,
        "threshold": churn_model.threshold,
        "metrics": evaluation_report.challenger,
        "champion_metrics": evaluation_report.champion,
        "champion_version": current,
        "comparisons": evaluation_report.comparisons,
        "best_recent": evaluation_report.best_recent,
        "compared_rows": evaluation_report.compared_rows,
        "holdout_uncertainty": evaluation_report.uncertainty,
        "calibration": evaluation_report.calibration,
        "calibration_method": churn_model.validation_metrics.get("calibration"),
        # The holdout scored the evaluated fit; the deployed fit learned the newest weeks
        # with final labels (core.training). It serves snapshots from as_of on: the first
        # week whose labels its training rows do not reach.
        "evaluated_fit": {"trained_on": (churn_model.data_window or {}).get("train"),
                          "holdout_roc_auc": evaluation_report.challenger.get("roc_auc")},
        "deployed_fit": {"trained_on": (churn_model.data_window or {}).get("serving")},
        "served_from": (churn_model.data_window or {}).get("as_of"),
        "feature_importance": [list(row) for row in evaluation_report.importance],
        "validation_metrics": churn_model.validation_metrics,
        "feature_spec": churn_model.spec.to_dict(),
        "data_window": evaluation_report.data_window,
        "holdout_rows": evaluation_report.holdout_rows,
        "code_version": churn_model.code_version,
        "fingerprint": churn_model.fingerprint,
        "trained_at": churn_model.trained_at,
        "gate": verdict.to_dict(),
        "run_id": context.run.run_id,
    }
    if evaluation_report.drift is not None:
        manifest["drift"] = evaluation_report.drift
    version = registry.register(churn_model, manifest)
    # The trend is redrawn now that this run's point has its version name.
    plots = dict(evaluation_report.plots, roc_auc_trend=metric_trend(reporting.trend_points(registry)))
    card_path, card = reporting.write_card(version, plots)
    reason = "bootstrap deploy (floors only)" if verdict.bootstrap else f"passed gate against {current}"
    pointer = registry.promote(version.version, reason=reason, run_id=context.run.run_id)
    record_run_outcome(storage.root, context.run, "deployed", version=version.version)  # issue 8
    context.log.info(f"promoted {version.version} to production ({reason}); model card {card_path}")
    roc = evaluation_report.comparisons.get("roc_auc") or {}
    return dg.MaterializeResult(metadata={
        "production_version": version.version, "previous_version": str(pointer["previous"]),
        "new_version": True, "sha256": version.sha256, "reason": reason,
        "path": dg.MetadataValue.path(str(version.path)), "verdict": verdict.summary,
        "roc_auc": float(evaluation_report.challenger["roc_auc"]),
        "delta_roc_auc": float(roc.get("difference", float("nan"))),
        "card_path": dg.MetadataValue.path(str(card_path)),
        "model_card": dg.MetadataValue.md(reporting.inline_images(card, plots)),
    })

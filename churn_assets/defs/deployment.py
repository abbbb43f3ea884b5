"""Deployment: promote the challenger in the registry, only on a passing gate verdict."""

import dagster as dg

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.evaluation import EvaluationReport
from churn_assets.defs import reporting
from churn_assets.defs.checks import record_refusal, verdict_for, verdict_metadata
from churn_assets.defs.decisions import record_run_outcome
from churn_assets.defs.evaluation import rounded_metadata
from churn_assets.defs.outcome import tag_outcome
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules
from churn_assets.health.plots import metric_trend
from churn_assets.storage.candidates import CandidateLog, candidate_entry
from churn_assets.storage.pointer import PinnedError, held_reason, pin_of, pin_text


class ModelCard(dg.ConfigurableResource):
    """What a new version's model card says beyond its manifest (``[model_card]`` settings)."""

    intended_use: str = ""


@dg.asset(group_name="churn", kinds={"sklearn"})
def deployed_model(context: dg.AssetExecutionContext, evaluation_report: EvaluationReport,
                   churn_model: ChurnPredictor, storage: ChurnStorage,
                   gate_rules: DeploymentGateRules, model_card: ModelCard) -> dg.MaterializeResult:
    """The production model version in the registry, with its model card.

    Re-applies the gate itself: a blocking check protects only runs that include it,
    and ``--select deployed_model`` would not. A refused challenger is recorded in
    ``registry/candidates.jsonl``; so is one that passed while the operator pinned
    production (``churn-assets rollback`` / ``promote``), as held, until ``unpin``. A challenger trained on exactly the data, config and
    code of the production model is not registered again. A new version gets ``card.md``
    and the evaluation's plots beside its ``manifest.json``.
    """
    verdict = verdict_for(evaluation_report, gate_rules)
    if not verdict.passed:
        record_refusal(storage, evaluation_report, verdict, context.run.run_id, "deployed_model",
                       gate_rules.gate_rules())
        tag_outcome(context.instance, context.run.run_id, "refused")
        raise dg.Failure(description=f"deployment refused by the gate: {verdict.summary}",
                         metadata=verdict_metadata(verdict), allow_retries=False)
    if evaluation_report.challenger_fingerprint != churn_model.fingerprint:
        raise dg.Failure(description="evaluation_report was computed for a different churn_model;"
                                     " materialize both together", allow_retries=False)
    registry = storage.registry()
    pointer = registry.production_pointer()
    if pin_of(pointer):
        return _held(context, storage, evaluation_report, verdict, pointer, model_card)
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
        tag_outcome(context.instance, context.run.run_id, "no_change")
        return dg.MaterializeResult(metadata={"production_version": current, "new_version": False,
                                              "verdict": verdict.summary, **pages(storage, model_card)})
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
    plots = dict(evaluation_report.plots, roc_auc_trend=metric_trend(
        reporting.trend_points(registry, production=version.version)))
    card_path, _ = reporting.write_card(version, plots, model_card.intended_use or None)
    reason = "bootstrap deploy (floors only)" if verdict.bootstrap else f"passed gate against {current}"
    try:
        pointer = registry.promote(version.version, reason=reason, run_id=context.run.run_id, unless_pinned=True)
    except PinnedError as exc:  # the operator pinned production while this run evaluated
        return _held(context, storage, evaluation_report, verdict, exc.pointer, model_card,
                     registered=version.version)
    record_run_outcome(storage.root, context.run, "deployed", version=version.version)  # issue 8
    tag_outcome(context.instance, context.run.run_id, "deployed")
    context.log.info(f"promoted {version.version} to production ({reason}); model card {card_path}")
    roc = evaluation_report.comparisons.get("roc_auc") or {}
    return dg.MaterializeResult(metadata=rounded_metadata({
        "production_version": version.version, "previous_version": str(pointer["previous"]),
        "new_version": True, "sha256": version.sha256, "reason": reason,
        "path": dg.MetadataValue.path(str(version.path)), "verdict": verdict.summary,
        "pinned": "no", "roc_auc": float(evaluation_report.challenger["roc_auc"]),
        "delta_roc_auc": float(roc.get("difference", float("nan"))),
        "card_path": dg.MetadataValue.path(str(card_path)),
        **pages(storage, model_card),
    }))


def pages(storage: ChurnStorage, model_card: ModelCard) -> dict:
    """What every deployed_model materialization shows: the registry's history as a table
    and the card of the version production points at now (after a rollback, or while a
    challenger is held, that version's card, not this run's challenger's)."""
    history, shown = reporting.production_pages(storage.registry(), model_card.intended_use or None)
    out = {"history": dg.MetadataValue.md(history)}
    if shown is not None:
        out["card_version"] = shown[0]
        out["model_card"] = dg.MetadataValue.md(shown[1])
    return out


def _held(context: dg.AssetExecutionContext, storage: ChurnStorage, report: EvaluationReport, verdict,
          pointer: dict, model_card: ModelCard, registered: str | None = None) -> dg.MaterializeResult:
    """A challenger that passed the gate while the operator pinned production: recorded in
    candidates.jsonl as held, production unchanged. Not a decision on this data (no
    ``record_run_outcome``): after ``unpin`` the next run retrains and may promote."""
    held = held_reason(pointer)
    entry = candidate_entry(report, verdict, context.run.run_id, "deployed_model")
    CandidateLog(storage.registry().root).record(dict(entry, held=True, verdict=held, pinned=pin_of(pointer),
                                                      registered_as=registered))
    tag_outcome(context.instance, context.run.run_id, "no_change")
    context.log.info(f"{held}; the challenger passed the gate ({verdict.summary}) and is recorded in"
                     f" candidates.jsonl; production stays {pointer['version']} until `churn-assets unpin`")
    return dg.MaterializeResult(metadata=rounded_metadata({
        "production_version": pointer["version"], "new_version": False, "held": held,
        "pinned": pin_text(pointer), "verdict": verdict.summary,
        "roc_auc": float(report.challenger["roc_auc"]), **pages(storage, model_card),
    }))

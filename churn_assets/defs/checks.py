"""The deployment gate as a blocking asset check on ``evaluation_report``."""

import dagster as dg

from churn_assets.core.evaluation import EvaluationReport

from churn_assets.defs.evaluation import evaluation_report
from churn_assets.core.gate import GateVerdict
from churn_assets.defs.reporting import gate_verdict
from churn_assets.core.markdown import md_table
from churn_assets.defs.decisions import record_run_outcome, rules_key
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules
from churn_assets.storage.candidates import CandidateLog, candidate_entry


def verdict_for(report: EvaluationReport, gate_rules: DeploymentGateRules) -> GateVerdict:
    return gate_verdict(report, gate_rules.gate_rules())


def verdict_metadata(verdict: GateVerdict) -> dict:
    rows = [{"metric": o.metric, "against": o.versus or o.against, "mode": o.mode,
             "challenger": round(o.challenger, 4),
             "reference": "-" if o.champion is None else round(o.champion, 4),
             "floor": "-" if o.floor is None else o.floor,
             "max_regression": "-" if o.max_regression is None else o.max_regression,
             "passed": "yes" if o.passed else "NO", "reason": o.reason} for o in verdict.outcomes]
    return {"rules": dg.MetadataValue.md(md_table(rows)), "bootstrap": verdict.bootstrap,
            "verdict": verdict.summary, "outcomes": dg.MetadataValue.json(verdict.to_dict())}


def record_refusal(storage: ChurnStorage, report: EvaluationReport, verdict: GateVerdict,
                   run_id: str, recorded_by: str, rules) -> dict:
    """Keep a refused challenger in ``registry/candidates.jsonl``: the registry's versions
    hold only what passed, and a refusal should be as readable as a promotion."""
    # The data this refusal covered is not retrained on again while the rules and the
    # champion stay the same (defs.decisions).
    record_run_outcome(storage.root, run_id, "refused", verdict=verdict.summary,
                       gate_rules=rules_key(rules), champion_version=report.champion_version)
    return CandidateLog(storage.registry().root).record(candidate_entry(report, verdict, run_id, recorded_by))


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="Challenger passes every gate rule: floors, and no regression beyond "
                            "tolerance against the champion on the same holdout rows.")
def deployment_gate(context: dg.AssetCheckExecutionContext, evaluation_report: EvaluationReport,
                    gate_rules: DeploymentGateRules, storage: ChurnStorage) -> dg.AssetCheckResult:
    verdict = verdict_for(evaluation_report, gate_rules)
    metadata = verdict_metadata(verdict)
    if not verdict.passed:
        # The blocking check stops deployed_model from running, so the refusal is recorded here.
        record_refusal(storage, evaluation_report, verdict, context.run.run_id, "deployment_gate",
                       gate_rules.gate_rules())
        metadata["recorded_in"] = dg.MetadataValue.path(str(CandidateLog(storage.registry().root).path))
    return dg.AssetCheckResult(passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
                               description=verdict.summary, metadata=metadata)

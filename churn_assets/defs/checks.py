"""The deployment gate as a blocking asset check on ``evaluation_report``."""

import dagster as dg

from churn_assets.core.evaluation import EvaluationReport

from churn_assets.defs.evaluation import evaluation_report
from churn_assets.core.gate import GateVerdict, evaluate_gate
from churn_assets.core.markdown import md_table
from churn_assets.defs.resources import DeploymentGateRules


def verdict_for(report: EvaluationReport, gate_rules: DeploymentGateRules) -> GateVerdict:
    return evaluate_gate(report.challenger, report.champion, gate_rules.gate_rules())


def verdict_metadata(verdict: GateVerdict) -> dict:
    rows = [{"metric": o.metric, "challenger": o.challenger,
             "champion": "-" if o.champion is None else o.champion,
             "floor": "-" if o.floor is None else o.floor,
             "max_regression": "-" if o.max_regression is None else o.max_regression,
             "passed": "yes" if o.passed else "NO", "reason": o.reason} for o in verdict.outcomes]
    return {"rules": dg.MetadataValue.md(md_table(rows)), "bootstrap": verdict.bootstrap,
            "verdict": verdict.summary, "outcomes": dg.MetadataValue.json(verdict.to_dict())}


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="Challenger passes every gate rule: floors, and no regression beyond "
                            "tolerance against the champion on the same holdout rows.")
def deployment_gate(evaluation_report: EvaluationReport, gate_rules: DeploymentGateRules) -> dg.AssetCheckResult:
    verdict = verdict_for(evaluation_report, gate_rules)
    return dg.AssetCheckResult(passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
                               description=verdict.summary, metadata=verdict_metadata(verdict))

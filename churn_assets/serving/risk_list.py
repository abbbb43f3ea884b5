"""The weekly risk list as one call: scores, reasons, value at risk, what changed.

Shared by the ``churn_scores`` asset and ``churn-assets score --explain`` (which must not
import Dagster), so both write the same columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churn_assets.core.risk import finish_risk_list
from churn_assets.core.scoring import REASON_COLUMNS, score_customers
from churn_assets.serving.explain import batch_explainer
from churn_assets.serving.fast_path import batch_scorer


def build_risk_list(predictor, customers: pd.DataFrame, version: str, scored_at: str, chunk_rows: int,
                    previous: pd.DataFrame | None) -> tuple[pd.DataFrame, dict, dict | None]:
    """The scored list with reasons, value at risk and changes since ``previous``; its
    summary (``core.risk.risk_summary``); the explanation's baseline (None: no reasons)."""
    spec = predictor.spec
    explainer = batch_explainer(predictor)
    if explainer is None:
        scores = score_customers(predictor, customers, version, scored_at, chunk_rows,
                                 predict=batch_scorer(predictor))
        at = scores.columns.get_loc("model_version")
        for offset, name in enumerate(REASON_COLUMNS):
            scores.insert(at + offset, name, np.nan if name.endswith("effect") else None)
    else:
        scores = score_customers(predictor, customers, version, scored_at, chunk_rows,
                                 explain=explainer.reasons_frame)
    scores, summary = finish_risk_list(scores, customers, getattr(spec, "value_column", None),
                                       spec.label_horizon_days, previous, spec.id_column)
    return scores, summary, explainer.describe() if explainer is not None else None


def summary_line(summary: dict) -> str:
    """The risk list's summary in one line (the run log and the CLI)."""
    parts = [f"{summary['at_risk']} at risk",
             f"expected churners {summary['expected_churners']:.1f} (95% {summary['expected_churners_low']}"
             f"-{summary['expected_churners_high']}) within {summary['horizon_days']} days"]
    if summary.get("value_column"):
        parts.append(f"value at risk {summary['value_at_risk']:,.2f} {summary['value_column']}"
                     f" (95% {summary['value_at_risk_low']:,.2f}-{summary['value_at_risk_high']:,.2f})")
    else:
        parts.append("no value column (value_at_risk = probability)")
    if "new_at_risk" in summary:
        parts.append(f"{summary['new_at_risk']} newly at risk")
    if summary.get("previous_customers") is not None:
        parts.append(f"{summary['no_longer_at_risk']} no longer at risk")
    return "; ".join(parts)

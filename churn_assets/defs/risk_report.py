"""The risk list's page in the UI: the run's summary, the decile table and one plot."""

from __future__ import annotations

import io

import dagster as dg
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churn_assets.core.markdown import md_table
from churn_assets.core.risk import decile_table
from churn_assets.health.plots import png_markdown


def decile_plot(table: pd.DataFrame) -> bytes:
    """Per risk decile: customers at risk (already last week, and newly), bars; the mean
    change of P(churn) since the previous list, a line on the right axis. PNG bytes."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    deciles = table["risk_decile"].to_numpy()
    new = table["new_at_risk"].to_numpy(dtype=float)
    already = table["at_risk"].to_numpy(dtype=float) - new
    ax.bar(deciles, already, color="tab:blue", label="at risk, also last list")
    ax.bar(deciles, new, bottom=already, color="tab:red", label="newly at risk")
    ax.set_xlabel("risk decile (1 = riskiest tenth)")
    ax.set_ylabel("customers at risk")
    ax.set_xticks(deciles)
    change = table["mean_risk_change"].to_numpy(dtype=float)
    if np.isfinite(change).any():
        right = ax.twinx()
        right.plot(deciles, change * 100, color="black", marker="o", label="mean risk change")
        right.axhline(0, color="grey", linewidth=0.5)
        right.set_ylabel("mean change of P(churn), points")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("This week's risk list by decile")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def risk_metadata(scores: pd.DataFrame, summary: dict, explained: dict | None) -> dict:
    """Dagster metadata of a risk list: every summary fact as a value the UI can chart,
    the decile table and its plot, and what the reasons are measured against."""
    metadata: dict = {}
    for key, value in summary.items():
        if value is None:
            continue
        if isinstance(value, np.generic):  # Dagster stores Python numbers only
            value = value.item()
        metadata[key] = value if isinstance(value, (int, float, str)) else str(value)
    table = decile_table(scores)
    rows = table.round({"min_probability": 4, "mean_probability": 4, "expected_churners": 1,
                        "value_at_risk": 2, "mean_risk_change": 4}).to_dict("records")
    metadata["deciles"] = dg.MetadataValue.md(md_table(rows))
    metadata["decile_plot"] = dg.MetadataValue.md(png_markdown(decile_plot(table), "risk list by decile"))
    if explained is not None:
        metadata["reasons_baseline"] = explained["baseline"]
        metadata["reasons_scale"] = explained["scale"]
        metadata["base_log_odds"] = float(explained["base_log_odds"])
    else:
        metadata["reasons_baseline"] = "no explanation for this model (its pipeline has no compiled form)"
    return metadata

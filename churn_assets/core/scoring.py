"""This week's churn-risk list: every customer scored by one model, in bounded chunks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from churn_assets.core.artifact import ChurnPredictor

SCORE_COLUMNS = ("churn_probability", "churn_label", "risk_decile", "model_version", "scored_at")
REASON_COLUMNS = ("reason_1", "reason_2", "reason_3", "reason_1_effect", "reason_2_effect", "reason_3_effect")
# Explains a chunk of records: P(churn) (n,) and the reason columns (each (n,)).
Explain = Callable[[pd.DataFrame], tuple[np.ndarray, dict[str, np.ndarray]]]


def latest_snapshots(history: pd.DataFrame, id_column: str, timestamp_column: str) -> pd.DataFrame:
    """Each customer's newest snapshot: one row per customer, shape (n_customers, columns)."""
    if history.empty:
        return history
    order = history.sort_values([id_column, timestamp_column], kind="stable")
    return order.drop_duplicates(id_column, keep="last").reset_index(drop=True)


def risk_deciles(probability: np.ndarray) -> np.ndarray:
    """Decile of each probability, 1 = the riskiest tenth of customers, 10 = the safest.

    Ranked (ties broken by position, so every decile is as full as it can be), because a
    retention team works the list top-down by rank, not by absolute probability.
    """
    n = len(probability)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-probability, kind="stable")] = np.arange(n)
    return (rank * 10 // n + 1).astype(np.int8)


def score_customers(predictor: ChurnPredictor, records: pd.DataFrame, model_version: str,
                    scored_at: str, chunk_rows: int = 250_000,
                    predict: Callable[[pd.DataFrame], np.ndarray] | None = None,
                    explain: Explain | None = None) -> pd.DataFrame:
    """Churn probability, label at the model's threshold and risk decile per record.

    ``records``: raw customer records with the spec's id and feature columns, shape
    (n, ...). Scored ``chunk_rows`` at a time, so the encoded matrix never holds more than
    one chunk (memory stays flat as the customer base grows). ``predict`` maps a chunk to
    P(churn) (default ``predictor.predict_proba``; the serving layer's compiled batch
    scorer gives the same numbers faster). ``explain``, when given, replaces ``predict``
    and adds ``REASON_COLUMNS`` (the serving layer's explainer: feature names, strongest
    push toward churn first, and their effects). Returns shape (n, 2 + 5 [+ 6]): id,
    snapshot date (when present), the probability, label and decile, the reasons, model
    version and scoring time; probabilities in [0, 1].
    """
    spec = predictor.spec
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    predict = predict or predictor.predict_proba
    probability = np.empty(len(records), dtype=np.float64)
    reasons: dict[str, list[np.ndarray]] = {c: [] for c in REASON_COLUMNS} if explain else {}
    for start in range(0, len(records), chunk_rows):
        chunk = records.iloc[start:start + chunk_rows]
        if explain is None:
            probability[start:start + len(chunk)] = predict(chunk)
            continue
        probability[start:start + len(chunk)], columns = explain(chunk)
        for name in REASON_COLUMNS:
            reasons[name].append(columns[name])
    keys = [c for c in (spec.id_column, spec.timestamp_column) if c in records.columns]
    scores = records[keys].reset_index(drop=True).copy()
    scores["churn_probability"] = probability
    scores["churn_label"] = (probability >= predictor.threshold).astype(np.int8)
    scores["risk_decile"] = risk_deciles(probability)
    for name, parts in reasons.items():
        scores[name] = (np.concatenate(parts) if parts else
                        np.zeros(0, dtype=float if name.endswith("effect") else object))
    scores["model_version"] = model_version
    scores["scored_at"] = pd.Timestamp(scored_at)
    return scores

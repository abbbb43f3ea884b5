"""Scoring a challenger against the champion on a holdout that neither has learned from.

``evaluate_holdout`` is what ``evaluation_report`` and the backtest both run: the
challenger's evaluated fit and the champion's are scored on the same holdout rows, and
every row a model could recognise is left out of the comparison. A row dated ``s`` can
be recognised by a fit whose training rows reach ``t`` when ``s < t + H`` (H the label
horizon): the labels of ``t`` cover churn up to ``t + H``, so they tell whether the same
customer churns after ``s``. The comparison uses the rows clear of every model compared
(the same embargo for both sides), and its inference is grouped by customer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.bootstrap import paired_bootstrap
from churn_assets.core.calibration import ece_noise_floor
from churn_assets.core.metrics import churn_metrics
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.uncertainty import auc_standard_error, delong_test

# Compared with a confidence interval in every run. ROC AUC has a closed-form paired
# test (DeLong); the others have none, so they are bootstrapped on the same resamples.
BOOTSTRAPPED = ("pr_auc", "brier_score", "brier_skill", "log_loss", "ece")
COMPARED = ("roc_auc",) + BOOTSTRAPPED
N_RESAMPLES = 1000


@dataclass(frozen=True)
class Contender:
    """A registered model compared with the challenger: its ``version`` name, the fit to
    score (``ChurnPredictor.evaluated_fit``) and the last snapshot day that fit learned
    from (None: unknown, so no row counts as clear of it)."""

    version: str
    model: ChurnPredictor
    trained_until: pd.Timestamp | None


def trained_until(predictor: ChurnPredictor) -> pd.Timestamp | None:
    """The last snapshot day ``predictor.evaluated_fit`` learned from, from its data window.

    A model with a separate evaluated fit learned the ``train`` weeks; an older model is
    its own evaluated fit and learned the train and validation weeks (it was refit on both).
    """
    window = predictor.data_window or {}
    span = window.get("train") if predictor.evaluated is not None else (window.get("validation")
                                                                        or window.get("train"))
    return pd.Timestamp(span[1]) if span else None


def contender(version: str, predictor: ChurnPredictor) -> Contender:
    return Contender(version, predictor.evaluated_fit, trained_until(predictor))


def clear_of(dates: pd.Series, until: pd.Timestamp | None, horizon_days: int) -> np.ndarray:
    """Which rows (snapshot ``dates``) share no label window with training rows up to
    ``until``: ``date >= until + horizon``. Shape (n,), bool."""
    if until is None:
        return np.zeros(len(dates), dtype=bool)
    day = pd.to_datetime(dates).dt.normalize().to_numpy()
    return day >= np.datetime64(pd.Timestamp(until).normalize() + pd.Timedelta(days=horizon_days))


def paired_comparisons(y_true, proba_challenger, proba_champion, threshold_challenger: float,
                       threshold_champion: float, groups=None, seed: int = 0,
                       metrics=COMPARED) -> dict[str, dict]:
    """Challenger - champion per metric, each ``asdict(PairedDifference)``: DeLong for ROC
    AUC, a paired bootstrap (``N_RESAMPLES``) for the rest; grouped by ``groups`` (one
    customer id per row) when given."""
    y = np.asarray(y_true, dtype=int)
    a = np.clip(np.asarray(proba_challenger, dtype=float), 0.0, 1.0)
    b = np.clip(np.asarray(proba_champion, dtype=float), 0.0, 1.0)
    out = {"roc_auc": asdict(delong_test(y, a, b, groups=groups))} if "roc_auc" in metrics else {}
    rest = tuple(m for m in metrics if m != "roc_auc")
    if rest:
        boot = paired_bootstrap(y, a, b, metrics=rest, threshold_challenger=threshold_challenger,
                                threshold_champion=threshold_champion, n_resamples=N_RESAMPLES, seed=seed,
                                groups=groups)
        out.update({name: asdict(diff) for name, diff in boot.items()})
    return out


@dataclass
class HoldoutEvaluation:
    """What ``evaluate_holdout`` measured; the parts of an ``EvaluationReport`` that are
    numbers, not plots.

    ``challenger``: metrics of the challenger's evaluated fit on every holdout row (what
    floors judge), with ``roc_auc_se`` beside them in ``uncertainty``. ``champion`` and
    ``comparisons``: on the ``compared_rows`` clear of both fits (None / empty without a
    champion or without such rows, ``excluded_rows`` says how many were left out).
    ``best_recent``: the comparison with the recent version that scored best on its clear
    rows (``version``, ``metrics``, ``comparisons``, ``rows``), None without one.
    ``ece_noise``: per model, the ECE a calibrated model would show on those rows (mean,
    p95). ``proba`` / ``champion_proba``: probabilities on the holdout (the champion's on
    compared rows only, NaN elsewhere), for plots.
    """

    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None
    comparisons: dict[str, dict]
    compared_rows: int
    excluded_rows: int
    best_recent: dict | None
    uncertainty: dict[str, float]
    ece_noise: dict[str, dict]
    proba: np.ndarray = field(repr=False)
    champion_proba: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def compared_mask(self) -> np.ndarray | None:
        return None if self.champion_proba is None else np.isfinite(self.champion_proba)


def _noise(proba: np.ndarray) -> dict:
    floor = ece_noise_floor(proba)
    return {"mean": floor.mean, "p95": floor.p95, "rows": floor.rows}


def evaluate_holdout(holdout: pd.DataFrame, spec: FeatureSpec, challenger: ChurnPredictor,
                     champion: Contender | None = None, recent: list[Contender] = (),
                     seed: int = 0) -> HoldoutEvaluation:
    """Score ``challenger.evaluated_fit`` on ``holdout`` (rows with ``_label``), and compare
    it with ``champion`` and each of ``recent`` on the rows clear of both (module
    docstring). Inference is grouped by ``spec.id_column``."""
    y = holdout[LABEL].to_numpy().astype(int)
    groups = holdout[spec.id_column].to_numpy()
    dates = holdout[spec.timestamp_column]
    model = challenger.evaluated_fit
    proba = model.predict_proba(holdout)
    metrics = churn_metrics(y, proba, model.threshold)
    auc, se = auc_standard_error(y, proba, groups=groups)
    horizon = spec.label_horizon_days
    mine = clear_of(dates, trained_until(challenger), horizon)
    notes = []
    if not mine.all():
        notes.append(f"{int((~mine).sum())} holdout rows share label windows with the challenger's own"
                     " training rows (a window too short for the label horizon)")
    result = HoldoutEvaluation(challenger=metrics, champion=None, champion_version=None, comparisons={},
                               compared_rows=0, excluded_rows=0, best_recent=None,
                               uncertainty={"roc_auc_se": se}, ece_noise={"challenger": _noise(proba)},
                               proba=proba, notes=notes)
    if champion is not None:
        rows = mine & clear_of(dates, champion.trained_until, horizon)
        result.champion_version = champion.version
        result.excluded_rows = int((~rows).sum())
        result.compared_rows = int(rows.sum())
        if rows.any():
            theirs = champion.model.predict_proba(holdout[rows])
            result.champion = churn_metrics(y[rows], theirs, champion.model.threshold)
            result.champion_proba = np.full(len(y), np.nan)
            result.champion_proba[rows] = theirs
            result.ece_noise["champion"] = _noise(theirs)
            if np.unique(y[rows]).size == 2:  # a paired interval needs both classes
                result.comparisons = paired_comparisons(y[rows], proba[rows], theirs, model.threshold,
                                                        champion.model.threshold, groups=groups[rows],
                                                        seed=seed)
        else:
            notes.append(f"no holdout row is clear of champion {champion.version}'s training weeks"
                         f" (it learned up to {champion.trained_until}): it cannot be compared")
    best = None
    for other in recent:
        rows = mine & clear_of(dates, other.trained_until, horizon)
        if not rows.any() or np.unique(y[rows]).size < 2:
            continue
        theirs = other.model.predict_proba(holdout[rows])
        comparison = paired_comparisons(y[rows], proba[rows], theirs, model.threshold, other.model.threshold,
                                        groups=groups[rows], seed=seed, metrics=("roc_auc",))
        if best is None or comparison["roc_auc"]["champion"] > best["metrics"]["roc_auc"]:
            best = {"version": other.version, "metrics": {"roc_auc": comparison["roc_auc"]["champion"]},
                    "comparisons": comparison, "rows": int(rows.sum())}
    result.best_recent = best
    return result


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class EvaluationReport:
    """Challenger and champion scored in the same run on the same holdout rows.

    ``challenger`` / ``champion``: metric name -> value (``metrics.METRIC_NAMES``);
    ``champion`` is None on a bootstrap run (nothing in production yet) and when no
    holdout row is clear of the champion's training weeks.
    ``comparisons``: per metric, the paired challenger - champion difference with its
    confidence interval (``dataclasses.asdict`` of ``uncertainty.PairedDifference``;
    empty without a champion), grouped by customer.
    ``best_recent``: the comparison with the best recent version (``HoldoutEvaluation``).
    ``calibration``: expected calibration error of each model on the holdout
    (``challenger_ece``, and ``champion_ece`` when there is a champion) with the ECE a
    calibrated model would show on those rows (``*_ece_noise_mean``, ``*_ece_noise_p95``).
    ``plots``: PNG bytes by plot name (tens of kB each), so ``deployed_model`` can save
    them beside the registry version without drawing them again.
    ``importance``: raw-feature permutation importance, (feature, mean, std) rows.
    ``drift``: an optional list of per-feature drift dicts (``feature``, ``psi``,
    ``status``) measured at training time, for the model card; None when not measured.
    """

    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None
    champion_fingerprint: str | None
    challenger_fingerprint: str
    holdout_rows: int
    holdout_churn_rate: float
    data_window: dict
    model_family: str
    threshold: float
    comparisons: dict[str, dict] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict, repr=False)
    importance: list[tuple[str, float, float]] = field(default_factory=list)
    drift: list[dict] | None = None
    best_recent: dict | None = None
    compared_rows: int = 0
    uncertainty: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> bool:
        return self.champion_version is None

    def to_dict(self, include_plots: bool = False) -> dict:
        """Plain dict; PNG bytes are left out unless asked for (they are not JSON)."""
        body = asdict(self)
        if not include_plots:
            body.pop("plots")
        return body


def calibration_summary(evaluation: HoldoutEvaluation) -> dict[str, float]:
    """ECE of each model on its rows with the noise floor beside it, as flat floats."""
    out = {"challenger_ece": evaluation.challenger["ece"]}
    if evaluation.champion is not None:
        out["champion_ece"] = evaluation.champion["ece"]
    for who, floor in evaluation.ece_noise.items():
        out[f"{who}_ece_noise_mean"] = floor["mean"]
        out[f"{who}_ece_noise_p95"] = floor["p95"]
    return out

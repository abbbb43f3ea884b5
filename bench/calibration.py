"""Calibration of the served churn probabilities, before and after, on two data sets.

    OMP_NUM_THREADS=1 python bench/calibration.py            # ~1-2 min on 2 busy cores
    python bench/calibration.py --customers 1000             # a quick look

Data: (1) the simulator's first refresh as the tests run it (conftest FIRST_WEEK,
``--customers`` customers, default 3000); (2) the IBM Telco export through
``FileSource(snapshot_weeks=10)`` with the default window, as test_telco.py runs it.

For each model family, ``train_challenger`` as the pipeline calls it: "before" is
``calibration=None`` (balanced class weights, raw probabilities: what was served
before), "sigmoid" (the default) and "isotonic" calibrate on the validation weeks.
"unweighted" is option (b): the same family without class weights, its threshold tuned
on the validation scores of the purged train-weeks fit, refit on the whole window, no
calibrator. Every number is on the holdout weeks, which no fit or calibrator saw
(though on the simulator the refit shares churn events with their first weeks; see
``training.purged_train``). ``cv log loss``: 5-fold
cross-validated log loss of each calibrator on the validation weeks (the honest way to
choose between them there: a calibrator scored on its own fitting rows flatters
isotonic). ``ECE if calibrated``: the mean (and 95th percentile) ECE of the same
probabilities against labels drawn from them, i.e. the ECE a perfectly calibrated model
shows on this many rows: the noise floor no model can beat on average.

Telco, pooled (``--folds``, default 5): 1,408 holdout rows cannot tell ECE 0.02 from the
noise floor (0.024), so the 10 snapshot weeks are cut into 5 blocks of 2 and each block
is the holdout once, with the 2 weeks before it (cyclically) as validation and the other
6 as train weeks: the pipeline's sizes. Telco's "weeks" are row order, not time (the
export has no dates, each customer appears once), so every block can be a holdout. The
out-of-sample probabilities of the chosen model are pooled over all 7,043 rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the shared 2-core machine

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from churn_assets.core.artifact import ScoreCalibrator  # noqa: E402
from churn_assets.core.calibration import expected_calibration_error  # noqa: E402
from churn_assets.core.features import build_preprocessor  # noqa: E402
from churn_assets.core.metrics import best_f1_threshold, churn_metrics  # noqa: E402
from churn_assets.core.spec import LABEL, load_spec  # noqa: E402
from churn_assets.core.training import (MODEL_FAMILIES, ModelingFrames, WindowPlan,  # noqa: E402
                                        make_classifier, purged_train, split_by_time,
                                        train_challenger)
from churn_assets.core.validation import validate_records  # noqa: E402
from churn_assets.devtools.sample_models import sample_frames  # noqa: E402
from churn_assets.sources.file import FileSource  # noqa: E402

FIRST_WEEK = "2026-05-04"  # conftest.FIRST_WEEK
TELCO = ROOT / "examples" / "data" / "telco.csv"


def telco_records():
    spec = load_spec("telco")
    batch = FileSource(path=str(TELCO), snapshot_weeks=10).fetch(spec, None)
    return spec, validate_records(batch.records, spec), batch.as_of


def datasets(customers: int):
    yield f"simulator ({customers} customers, {FIRST_WEEK})", load_spec("simulator"), \
        sample_frames(n_customers=customers, as_of=FIRST_WEEK)
    spec, records, as_of = telco_records()
    yield "Telco (file source)", spec, split_by_time(records, spec, WindowPlan(), as_of)


def telco_folds(folds: int):
    """ModelingFrames per block of Telco weeks (see the module doc), oldest block first."""
    spec, records, as_of = telco_records()
    weeks = sorted(records[spec.timestamp_column].unique())
    blocks = np.array_split(np.arange(len(weeks)), folds)
    week_block = {w: b for b, idx in enumerate(blocks) for w in np.asarray(weeks)[idx]}
    block = records[spec.timestamp_column].map(week_block).to_numpy()
    for k in range(folds):
        part = lambda b: records[block == b % folds].reset_index(drop=True)  # noqa: E731
        train = pd.concat([part(b) for b in range(k + 1, k + folds - 1)], ignore_index=True)
        yield spec, ModelingFrames(train=train, validation=part(k - 1), holdout=part(k), as_of=as_of,
                                   label_cutoff=as_of, held_back_rows=0)


def noise_floor(proba: np.ndarray, draws: int, rng) -> tuple[float, float]:
    """ECE of ``proba`` against labels drawn from it: mean and 95th percentile."""
    values = [expected_calibration_error((rng.random(proba.size) < proba).astype(int), proba)
              for _ in range(draws)]
    return float(np.mean(values)), float(np.quantile(values, 0.95))


def cv_log_loss(decision: np.ndarray, y: np.ndarray, method: str) -> float:
    """5-fold cross-validated log loss of a calibrator fitted on validation decision values."""
    out = np.empty(len(y))
    for fit_rows, test_rows in StratifiedKFold(5, shuffle=True, random_state=0).split(decision, y):
        out[test_rows] = ScoreCalibrator.fit(method, decision[fit_rows], y[fit_rows])(decision[test_rows])
    return float(log_loss(y, np.clip(out, 1e-15, 1 - 1e-15)))


def unweighted(frames, spec, preprocessor, family: str):
    """Option (b): no class weights, no calibrator; threshold from the purged train-weeks
    fit (as train_challenger tunes it), then refit on the whole window."""
    frozen = FrozenEstimator(preprocessor)
    rows = purged_train(frames, spec)
    fit = Pipeline([("p", frozen), ("c", make_classifier(family, 42, class_weight=None))])
    fit.fit(rows, rows[LABEL].to_numpy())
    threshold = best_f1_threshold(frames.validation[LABEL].to_numpy(), fit.predict_proba(frames.validation)[:, 1])
    window = frames.training_window
    final = Pipeline([("p", frozen), ("c", make_classifier(family, 42, class_weight=None))])
    final.fit(window, window[LABEL].to_numpy())
    return final.predict_proba(frames.holdout)[:, 1], threshold


def pooled_telco(folds: int, draws: int, rng) -> list[str]:
    """Markdown lines: per fold and pooled, the chosen model's holdout ECE next to the noise floor."""
    lines = ["| holdout block | rows | churn rate | chosen | ROC AUC (raw / served) | ECE | ECE if calibrated"
             " (mean / 95%) | mean P |", "|---|---|---|---|---|---|---|---|"]
    pooled_y, pooled_p = [], []
    for k, (spec, frames) in enumerate(telco_folds(folds)):
        preprocessor = build_preprocessor(spec).fit(frames.training_window)
        predictor, _ = train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, "bench", "now")
        y, p = frames.holdout[LABEL].to_numpy(), predictor.predict_proba(frames.holdout)
        raw = predictor.pipeline.predict_proba(frames.holdout)[:, 1]
        floor_mean, floor_95 = noise_floor(p, draws, rng)
        span = frames.holdout[spec.timestamp_column]
        lines.append(f"| {k + 1}: {span.min():%m-%d}..{span.max():%m-%d} | {len(y)} | {y.mean():.3f}"
                     f" | {predictor.family} | {churn_metrics(y, raw, 0.5)['roc_auc']:.4f} /"
                     f" {churn_metrics(y, p, 0.5)['roc_auc']:.4f} | {expected_calibration_error(y, p):.4f}"
                     f" | {floor_mean:.4f} / {floor_95:.4f} | {p.mean():.3f} |")
        pooled_y.append(y)
        pooled_p.append(p)
        print(lines[-1], flush=True)
    y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
    floor_mean, floor_95 = noise_floor(p, draws, rng)
    # ROC AUC of pooled scores mixes five models' scales, so only the served one is shown.
    lines.append(f"| **pooled** | {len(y)} | {y.mean():.3f} | | - / {churn_metrics(y, p, 0.5)['roc_auc']:.4f}"
                 f" | **{expected_calibration_error(y, p):.4f}** | {floor_mean:.4f} / {floor_95:.4f}"
                 f" | {p.mean():.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5, help="Telco holdout blocks to pool (0: skip)")
    parser.add_argument("--skip-tables", action="store_true", help="only the pooled Telco table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    lines = [f"### Calibration ({dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS=1)",
             "", f"`python bench/calibration.py {' '.join(sys.argv[1:])}`".replace(" `", "`"), ""]
    for name, spec, frames in ([] if args.skip_tables else datasets(args.customers)):
        preprocessor = build_preprocessor(spec).fit(frames.training_window)
        y = frames.holdout[LABEL].to_numpy()
        chosen, _ = train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, "bench", "now")
        lines += [f"**{name}**: train {len(frames.train)}, validation {len(frames.validation)}, holdout"
                  f" {len(y)} rows, holdout churn rate {y.mean():.3f}; the pipeline chooses"
                  f" `{chosen.family}`.", "",
                  "| family | served probabilities | ROC AUC | ECE | ECE if calibrated (mean / 95%) |"
                  " mean P | log loss | Brier | threshold | F1 | cv log loss (validation) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for family in MODEL_FAMILIES:
            # The served fit's validation decision values, for the cross-validated choice.
            rows = purged_train(frames, spec)
            fit = Pipeline([("p", FrozenEstimator(preprocessor)), ("c", make_classifier(family, 42))])
            fit.fit(rows, rows[LABEL].to_numpy())
            decision, y_val = fit.decision_function(frames.validation), frames.validation[LABEL].to_numpy()
            variants = {}
            for calibration in (None, "sigmoid", "isotonic"):
                predictor, _ = train_challenger(frames, spec, preprocessor, [family], 42, "bench", "now",
                                                calibration=calibration)
                variants["before (balanced, raw)" if calibration is None else calibration] = (
                    predictor.predict_proba(frames.holdout), predictor.threshold,
                    cv_log_loss(decision, y_val, calibration) if calibration else None)
            proba, threshold = unweighted(frames, spec, preprocessor, family)
            variants["unweighted, raw"] = (proba, threshold, None)
            for label, (proba, threshold, cv) in variants.items():
                m = churn_metrics(y, proba, threshold)
                floor_mean, floor_95 = noise_floor(proba, args.draws, rng)
                lines.append(
                    f"| {family} | {label} | {m['roc_auc']:.4f} | {m['ece']:.4f} | {floor_mean:.4f} / {floor_95:.4f}"
                    f" | {proba.mean():.3f} | {m['log_loss']:.4f} | {m['brier_score']:.4f} | {threshold:.3f}"
                    f" | {m['f1']:.3f} | {'-' if cv is None else f'{cv:.4f}'} |")
            print("\n".join(lines[-4:]), flush=True)
        lines.append("")
    if args.folds:
        lines += [f"**Telco pooled over {args.folds} holdout blocks** (the pipeline's choice and calibration"
                  " per block; ROC AUC raw = the same fit without its calibrator):", ""]
        lines += pooled_telco(args.folds, args.draws, rng) + [""]
    lines.append(f"Total {time.perf_counter() - started:.0f} s.")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()

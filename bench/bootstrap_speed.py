"""Speed of the paired bootstrap (and DeLong) used to compare a challenger with a champion.

    OMP_NUM_THREADS=1 python bench/bootstrap_speed.py                 # 50,000 rows, 1000 resamples
    python bench/bootstrap_speed.py --rows 10000 200000 --resamples 2000

Synthetic holdout: ~25% churn, two correlated models with continuous (untied)
probabilities, the worst case for the ranking metrics (one segment per positive).
Each cell is the best of ``--repeat`` runs of ``paired_bootstrap`` (wall clock, seconds,
both models, all resamples). Goal: 1000 resamples of 50,000 rows well under a second for
the loss and accuracy-family metrics, about a second with PR AUC.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, as the tests and the shared 2-core machine use.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from churn_assets.core.bootstrap import BOOTSTRAP_METRICS, paired_bootstrap  # noqa: E402
from churn_assets.core.uncertainty import delong_test  # noqa: E402

METRIC_SETS = {
    "brier_score+log_loss": ("brier_score", "log_loss"),
    "accuracy/precision/recall/f1": ("accuracy", "precision", "recall", "f1"),
    "losses+threshold+ece": ("brier_score", "log_loss", "accuracy", "precision", "recall", "f1", "ece"),
    "pr_auc": ("pr_auc",),
    "all (incl. pr_auc, roc_auc)": BOOTSTRAP_METRICS,
}


def holdout(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.25).astype(int)
    signal = 1.5 * y + rng.normal(0, 1, rows)
    champion = 1 / (1 + np.exp(-(signal - 1.0)))
    challenger = 1 / (1 + np.exp(-(signal - 1.0 + rng.normal(0, 0.3, rows))))
    return y, challenger, champion


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} cpus")
    print(f"{'metric set':<34} {'rows':>9} {'resamples':>10} {'seconds':>8}")
    for rows in args.rows:
        y, challenger, champion = holdout(rows)
        for name, metrics in METRIC_SETS.items():
            seconds = best_of(args.repeat, lambda: paired_bootstrap(
                y, challenger, champion, metrics=metrics, n_resamples=args.resamples))
            print(f"{name:<34} {rows:>9,} {args.resamples:>10,} {seconds:>8.3f}")
        seconds = best_of(args.repeat, lambda: delong_test(y, challenger, champion))
        print(f"{'roc_auc by DeLong (no resampling)':<34} {rows:>9,} {'-':>10} {seconds:>8.3f}")


if __name__ == "__main__":
    main()

"""Throughput of the churn-risk list: customers scored per second, per model family.

    OMP_NUM_THREADS=1 .venv/bin/python bench/score.py --customers 1000000

Scores ``--customers`` simulated customer snapshots with a logistic-regression and a
gradient-boosting model trained by the project's own training code, through
``core.scoring.score_customers`` (chunked; the serving fast path's compiled arithmetic applied to whole columns). Best
of ``--repeats`` runs; prints a markdown table for BENCHMARKS.md.

Each family is run three ways, interleaved: probabilities only; the whole risk list as
``churn_scores`` writes it (``serving.risk_list.build_risk_list``: reasons, value at
risk, changes against a previous list); and the boosted model through scikit-learn's
tree walk (the baseline of the leaf tables).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from churn_assets.core.scoring import score_customers
from churn_assets.devtools.sample_models import sample_frames, train_family
from churn_assets.serving.fast_path import CompiledChurnModel
from churn_assets.serving.risk_list import build_risk_list
from churn_assets.sources.simulation import SimulatorSettings, simulate


def customers(n: int) -> pd.DataFrame:
    base = simulate(SimulatorSettings(n_customers=3000, seed=11), "2026-05-04")
    rng = np.random.default_rng(0)
    return base.iloc[rng.integers(0, len(base), size=n)].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    args = parser.parse_args()
    frames = sample_frames(n_customers=1500)
    records = customers(args.customers)
    print("| model family | customers | best seconds | customers/s |\n|---|---:|---:|---:|")
    predictors = {family: train_family(frames, family) for family in ("logistic_regression", "hist_gradient_boosting")}
    runs = [(family, predictor, CompiledChurnModel(predictor)) for family, predictor in predictors.items()]
    # The same trees walked by scikit-learn instead of the leaf tables: the baseline,
    # measured in the same process.
    walked = CompiledChurnModel(predictors["hist_gradient_boosting"])
    walked.scorer.leaf_tables = None
    runs.append(("hist_gradient_boosting (scikit-learn's walk)", predictors["hist_gradient_boosting"], walked))
    # Last week's list: every customer, a slightly different probability.
    previous = {family: score_customers(predictor, records, "v0001", "2026-04-27T03:00:00", args.chunk_rows,
                                        predict=CompiledChurnModel(predictor).predict_frame)
                for family, predictor in predictors.items()}
    for frame in previous.values():
        frame["churn_probability"] *= 0.9
    best = {name: float("inf") for name, _, _ in runs}
    best.update({f"{family}, risk list with reasons": float("inf") for family in predictors})
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits every variant
        for name, predictor, compiled in runs:
            started = time.perf_counter()
            score_customers(predictor, records, "v0001", "2026-05-04T03:00:00", args.chunk_rows,
                            predict=compiled.predict_frame)
            best[name] = min(best[name], time.perf_counter() - started)
            if name in predictors:
                started = time.perf_counter()
                build_risk_list(predictor, records, "v0001", "2026-05-04T03:00:00", args.chunk_rows,
                                previous[name])
                best[f"{name}, risk list with reasons"] = min(best[f"{name}, risk list with reasons"],
                                                              time.perf_counter() - started)
    for name, seconds in best.items():
        print(f"| {name} | {len(records):,} | {seconds:.2f} | {len(records) / seconds:,.0f} |")


if __name__ == "__main__":
    main()

"""How often the deployment gate's ROC AUC rule refuses a challenger that is no worse,
and how often it lets a really worse one through, by holdout size.

    OMP_NUM_THREADS=1 nohup python bench/gate_study.py > /tmp/gate_study.log 2>&1 &
    python bench/gate_study.py --trials 100 --customers 20000 --minutes 2   # a quick look

Data: one big simulated customer base (``--customers``, seed 11) up to the conftest
FIRST_WEEK; its 12 training weeks are the training pool, its 2 holdout weeks the
holdout pool (one snapshot per customer per week, as the real holdout has). Both are
preprocessed once, with ``build_preprocessor`` fitted on the training pool, so each
trial only fits logistic regressions (``make_classifier``) on fixed matrices.

Each trial draws disjoint training samples of ``--train-rows`` rows and fits: the
champion; a "same" challenger, all features on a fresh sample of the same distribution
(no real change); a "half data" challenger, all features on half as many rows (a true
drop of about 0.001, within every tolerance studied: a challenger the gate should also
accept); a "drop" challenger on a fresh sample without the raw features whose removal
costs about 0.02 ROC AUC (a real regression). For each
holdout size it draws a fresh holdout from the pool, scores the three models and asks
``core.gate.evaluate_gate`` with the real rules, the noninferiority ones fed the
DeLong comparison (``core.uncertainty.delong_test``), as ``evaluation_report`` does.
Reported: the share of "same" and "half data" challengers refused (false refusals)
and of "drop" challengers accepted (missed regressions), with a 95% Wilson interval.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the shared 2-core machine

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from churn_assets.core.features import build_preprocessor  # noqa: E402
from churn_assets.core.gate import GateRule, evaluate_gate  # noqa: E402
from churn_assets.core.spec import LABEL, load_spec  # noqa: E402
from churn_assets.core.training import WindowPlan, make_classifier, split_by_time  # noqa: E402
from churn_assets.core.uncertainty import delong_test  # noqa: E402
from churn_assets.core.validation import validate_records  # noqa: E402
from churn_assets.sources.simulation import SimulatorSettings, simulate  # noqa: E402

AS_OF = "2026-05-04"  # conftest FIRST_WEEK
TARGET_DROP = 0.02
RULES = {
    "point, drop <= 0.005": GateRule("roc_auc", max_regression=0.005),
    "noninferiority 0.005 @95%": GateRule("roc_auc", max_regression=0.005, mode="noninferiority"),
    "noninferiority 0.0025 @95%": GateRule("roc_auc", max_regression=0.0025, mode="noninferiority"),
    "noninferiority 0.01 @95%": GateRule("roc_auc", max_regression=0.01, mode="noninferiority"),
    "noninferiority 0 @95%": GateRule("roc_auc", max_regression=0.0, mode="noninferiority"),
}


def pools(customers: int, seed: int):
    spec = load_spec("simulator")
    raw = simulate(SimulatorSettings(n_customers=customers, seed=seed), AS_OF)
    frames = split_by_time(validate_records(raw, spec), spec, WindowPlan(), pd.Timestamp(AS_OF))
    train = frames.training_window
    pre = build_preprocessor(spec).fit(train)
    names = list(pre.get_feature_names_out())
    groups = {}
    for feature in (*spec.numeric_features, *spec.categorical_features):
        groups[feature] = [i for i, n in enumerate(names)
                           if n in (f"numeric__{feature}", f"numeric__missingindicator_{feature}")
                           or n.startswith(f"categorical__{feature}_")]
    return (pre.transform(train), train[LABEL].to_numpy(), pre.transform(frames.holdout),
            frames.holdout[LABEL].to_numpy(), groups)


def fit(X, y, columns=None):
    model = make_classifier("logistic_regression", seed=0)
    return model.fit(X if columns is None else X[:, columns], y), columns


def score(fitted, X):
    model, columns = fitted
    return model.decision_function(X if columns is None else X[:, columns])


def pick_features(Xt, yt, Xh, yh, groups, rng, rows):
    """The raw feature, or set of up to three, whose removal costs closest to TARGET_DROP
    ROC AUC on the holdout pool (no single simulator feature costs about 0.02)."""
    sample = rng.choice(len(yt), size=min(len(yt), rows), replace=False)
    full = roc_auc_score(yh, score(fit(Xt[sample], yt[sample]), Xh))

    def cost(features):
        keep = [i for i in range(Xt.shape[1]) if not any(i in groups[f] for f in features)]
        return full - roc_auc_score(yh, score(fit(Xt[sample], yt[sample], keep), Xh))

    costs = {(f,): cost((f,)) for f in groups}
    # Sets only of features that matter at all, and without the one that alone costs
    # twice the target: the others change nothing, that one overshoots.
    useful = [f for (f,), c in costs.items() if 0.001 < c < 2 * TARGET_DROP]
    for size in (2, 3):
        costs.update({combo: cost(combo) for combo in itertools.combinations(useful, size)})
    best = min(costs, key=lambda fs: abs(costs[fs] - TARGET_DROP))
    return best, costs, full


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    z, p = 1.96, k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def gate_refuses(rule: GateRule, y, challenger, champion) -> bool:
    diff = delong_test(y, challenger, champion, confidence=rule.confidence)
    metrics = ({"roc_auc": diff.challenger}, {"roc_auc": diff.champion})
    return not evaluate_gate(*metrics, [rule], comparisons={"roc_auc": diff.to_dict()}).passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=60_000)
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20_000])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--minutes", type=float, default=9.0, help="stop starting trials after this")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    Xt, yt, Xh, yh, groups = pools(args.customers, args.seed)
    print(f"pools: training {len(yt)} rows (churn {yt.mean():.3f}), holdout {len(yh)} rows"
          f" (churn {yh.mean():.3f}); {time.perf_counter() - started:.0f} s", flush=True)
    dropped, costs, full_auc = pick_features(Xt, yt, Xh, yh, groups, rng, args.train_rows)
    print("ROC AUC cost of dropping:", ", ".join(f"{'+'.join(f)} {c:+.4f}" for f, c in
                                               sorted(costs.items(), key=lambda kv: -kv[1])[:15]), flush=True)
    feature = " + ".join(dropped)
    keep = [i for i in range(Xt.shape[1]) if not any(i in groups[f] for f in dropped)]
    print(f"drop challenger: without {feature} (cost {costs[dropped]:.4f}; full model {full_auc:.4f})", flush=True)

    kinds = ("same", "half", "drop")
    refused = {(s, r, kind): 0 for s in args.sizes for r in RULES for kind in kinds}
    true_diff = {kind: [] for kind in kinds}
    trials = 0
    deadline = started + 60 * args.minutes
    while trials < args.trials and time.perf_counter() < deadline:
        rows = rng.permutation(len(yt))[:4 * args.train_rows].reshape(4, -1)
        half = rows[3][:args.train_rows // 2]
        champion = fit(Xt[rows[0]], yt[rows[0]])
        challengers = {"same": fit(Xt[rows[1]], yt[rows[1]]), "half": fit(Xt[half], yt[half]),
                       "drop": fit(Xt[rows[2]], yt[rows[2]], keep)}
        pool_champion = score(champion, Xh)
        for kind, model in challengers.items():
            pool_scores = score(model, Xh)
            true_diff[kind].append(roc_auc_score(yh, pool_scores) - roc_auc_score(yh, pool_champion))
            challengers[kind] = pool_scores
        for size in args.sizes:
            holdout = rng.choice(len(yh), size=min(size, len(yh)), replace=False)
            for kind, pool_scores in challengers.items():
                for name, rule in RULES.items():
                    refused[(size, name, kind)] += gate_refuses(rule, yh[holdout], pool_scores[holdout],
                                                                pool_champion[holdout])
        trials += 1
        if trials % 25 == 0:
            print(f"{trials} trials, {time.perf_counter() - started:.0f} s", flush=True)

    elapsed = time.perf_counter() - started
    same, half, drop = (np.array(true_diff[kind]) for kind in kinds)
    lines = [
        f"### Gate study ({dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS=1)",
        "",
        f"`{' '.join(['python', 'bench/gate_study.py', *sys.argv[1:]])}`: {trials} trials per cell,"
        f" {elapsed / 60:.1f} min. Simulator, {args.customers} customers to {AS_OF}; training pool"
        f" {len(yt)} rows, holdout pool {len(yh)} rows (churn {yh.mean():.3f}); each model is a"
        f" logistic regression on {args.train_rows} fresh training rows.",
        f"True ROC AUC difference on the whole holdout pool (challenger - champion): no change"
        f" {same.mean():+.4f} (sd {same.std():.4f}), half data {half.mean():+.4f} (sd {half.std():.4f}),"
        f" drop (without `{feature}`) {drop.mean():+.4f} (sd {drop.std():.4f}).",
        "",
        "| holdout rows | rule | no change refused | half data refused | real drop accepted (missed) |",
        "|---|---|---|---|---|",
    ]
    for size in args.sizes:
        for name in RULES:
            counts = (refused[(size, name, "same")], refused[(size, name, "half")],
                      trials - refused[(size, name, "drop")])
            cells = []
            for k in counts:
                low, high = wilson(k, trials)
                cells.append(f"{k / trials:.1%} ({low:.1%}-{high:.1%})")
            lines.append(f"| {size} | {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()

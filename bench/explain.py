"""Reasons for boosted trees: our per-leaf path attributions against exact TreeSHAP (shap).

    OMP_NUM_THREADS=1 .venv/bin/python bench/explain.py [--rows 2000]

Trains the gradient-boosting model as ``churn_model`` does (simulator, 1,500 customers),
then explains ``--rows`` encoded customers with ``serving/explain.py`` (one thread) and,
when the ``shap`` package is importable (``pip install shap``; not a dependency of the
project), with ``shap.TreeExplainer`` (exact path-dependent TreeSHAP, one thread), and
prints rows per second of each and how often the two agree on a customer's strongest
reason and on the set of the three strongest (per raw feature, one-hot and indicator
columns summed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from churn_assets.devtools.sample_models import sample_frames, train_family
from churn_assets.serving.explain import explainer_for
from churn_assets.serving.fast_path import CompiledChurnModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    frames = sample_frames(n_customers=1500)
    predictor = train_family(frames, "hist_gradient_boosting")
    compiled = CompiledChurnModel(predictor)
    explainer = explainer_for(compiled, predictor)
    rows = frames.holdout.sample(args.rows, replace=True, random_state=0)
    X = compiled.encode_many(compiled.frame_records(rows))
    started = time.perf_counter()
    ours = explainer.explain_encoded(X).contributions / explainer.slope  # decision-value scale
    seconds = time.perf_counter() - started
    print(f"path attributions (serving/explain.py): {len(X) / seconds:,.0f} customers/s, one thread")
    try:
        import shap
    except ImportError:
        print("shap is not installed: no TreeSHAP comparison")
        return
    tree_shap = shap.TreeExplainer(predictor.classifier)
    n = min(len(X), 1000)
    started = time.perf_counter()
    values = np.asarray(tree_shap.shap_values(X[:n]))
    seconds = time.perf_counter() - started
    member = np.zeros((compiled.n_encoded, len(explainer.features)))
    member[np.arange(compiled.n_encoded), compiled.column_feature] = 1.0
    grouped = values @ member
    top1 = float((grouped.argmax(axis=1) == ours[:n].argmax(axis=1)).mean())
    top3 = float(np.mean([len(set(np.argsort(-g)[:3]) & set(np.argsort(-o)[:3])) / 3
                          for g, o in zip(grouped, ours[:n])]))
    print(f"shap {shap.__version__} TreeExplainer (exact TreeSHAP): {n / seconds:,.0f} customers/s, one thread")
    print(f"strongest reason the same in {top1:.1%} of customers; top-3 sets overlap {top3:.1%}")


if __name__ == "__main__":
    main()

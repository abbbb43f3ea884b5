"""Do the real data sets reward a model for recognising rows it trained on?

    OMP_NUM_THREADS=1 python bench/real_data_leaks.py [--shared ../shared/data]

Telco (shipped) and the e-commerce export (``../shared/data``, not shipped) have no
snapshot dates, so the file source spreads their rows over 10 weekly snapshots by row
order, as ``examples/*.toml`` do, and ``split_by_time`` cuts them as a refresh would.
Neither repeats a customer id, and both have a label horizon of 0, so no two rows share
a label window. But the e-commerce export repeats rows under other ids (19.8% equal
another row in every column but the id): a holdout row whose exact copy was trained on
is recognised, not predicted. For each data set and family this reports the holdout ROC
AUC of the evaluated fit on all holdout rows, on the rows with an exact copy in the
training weeks, on those with a near copy (equal on every column no row leaves empty,
and the label) and on the rest.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from churn_assets.core.encoding import fit_preprocessor  # noqa: E402
from churn_assets.core.spec import LABEL, load_spec  # noqa: E402
from churn_assets.core.training import WindowPlan, split_by_time, train_challenger  # noqa: E402
from churn_assets.core.validation import validate_records  # noqa: E402
from churn_assets.sources.file import FileSource  # noqa: E402


def copies(frames, spec, columns=None) -> np.ndarray:
    """Holdout rows whose ``columns`` (default: every feature and the label) equal those of
    a row of the train or validation weeks."""
    columns = columns or [*spec.feature_columns, LABEL]

    def keys(frame: pd.DataFrame) -> pd.Series:
        return pd.util.hash_pandas_object(frame[columns].astype("object").astype(str), index=False)

    return keys(frames.holdout).isin(set(keys(pd.concat([frames.train, frames.validation])))).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    sets = [("telco", load_spec("telco"), ROOT / "examples" / "data" / "telco.csv"),
            ("ecommerce", load_spec(str(ROOT / "examples" / "ecommerce.json")),
             Path(args.shared) / "ecommerce_churn.csv")]
    print("| data set | family | holdout rows | with a trained copy | with a near copy | ROC AUC all | on copies |"
          " on near copies | on the rest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, spec, path in sets:
        if not path.exists():
            print(f"| {name} | - | {path} not found | | | | | | |")
            continue
        batch = FileSource(path=str(path), snapshot_weeks=10).fetch(spec, None)
        records = validate_records(batch.records, spec)
        frames = split_by_time(records, spec, WindowPlan(training_window_weeks=8), batch.as_of)
        copied = copies(frames, spec)
        # Rows equal on the columns no row leaves empty: the same customer with a gap filled.
        complete = [c for c in spec.feature_columns if records[c].notna().all()]
        near = copies(frames, spec, [*complete, LABEL]) & ~copied
        y = frames.holdout[LABEL].to_numpy()
        for family in ("logistic_regression", "hist_gradient_boosting"):
            preprocessor = fit_preprocessor(spec, [frames.train, frames.validation])
            predictor, _ = train_challenger(frames, spec, preprocessor, [family], 42, "bench", "bench")
            p = predictor.evaluated_fit.predict_proba(frames.holdout)

            def auc(mask):
                return f"{roc_auc_score(y[mask], p[mask]):.4f}" if np.unique(y[mask]).size == 2 else "-"

            print(f"| {name} | {family} | {len(y)} | {copied.sum()} ({copied.mean():.1%}) |"
                  f" {near.sum()} ({near.mean():.1%}) | {auc(slice(None))} | {auc(copied)} | {auc(near)} |"
                  f" {auc(~copied & ~near)} |")


if __name__ == "__main__":
    main()

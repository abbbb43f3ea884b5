"""The weekly refresh as a bare pandas + scikit-learn script: the baseline for bench/pipeline.py.

The same work as the Dagster graph (read, validate, upsert history, split, fit the
preprocessing, train and choose the challenger, evaluate, gate, register and promote),
calling the same library functions, with no orchestration around them.
"""

import argparse
import datetime as dt
from pathlib import Path

from churn_assets.core.encoding import fit_preprocessor
from churn_assets.core.gate import DEFAULT_RULES, evaluate_gate
from churn_assets.storage.history import CustomerHistory
from churn_assets.core.metrics import churn_metrics
from churn_assets.storage.registry import ModelRegistry
from churn_assets.sources.file import FileSource
from churn_assets.core.spec import load_spec
from churn_assets.core.spec import LABEL
from churn_assets.core.training import MODEL_FAMILIES, WindowPlan, split_by_time, train_challenger
from churn_assets.core.validation import validate_records
from churn_assets.core.code_version import code_version


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--home", required=True)
    args = parser.parse_args()
    spec, home = load_spec("simulator"), Path(args.home)
    batch = FileSource(path=args.data).fetch(spec, None)
    valid = validate_records(batch.records, spec)
    history = CustomerHistory(home / "history")
    history.upsert(valid.drop(columns=[LABEL]), spec.key_columns, state={"as_of": str(batch.as_of)})
    stored = history.load()
    stored[LABEL] = (stored[spec.target_column].astype(str) == spec.positive_label).astype("int64")
    frames = split_by_time(stored, spec, WindowPlan(), batch.as_of)
    preprocessor = fit_preprocessor(spec, [frames.train, frames.validation])
    model, _ = train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, code_version(),
                                dt.datetime.now(dt.timezone.utc).isoformat())
    holdout = frames.holdout
    metrics = churn_metrics(holdout[LABEL].to_numpy(), model.predict_proba(holdout), model.threshold)
    verdict = evaluate_gate(metrics, None, DEFAULT_RULES)
    assert verdict.passed, verdict.summary
    registry = ModelRegistry(home / "registry")
    version = registry.register(model, {"metrics": metrics, "fingerprint": model.fingerprint})
    registry.promote(version.version, reason="bootstrap")
    print(f"bare: {model.family} roc_auc={metrics['roc_auc']:.4f} rows={len(stored)}")


if __name__ == "__main__":
    main()

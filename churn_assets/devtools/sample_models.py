"""Small registries of real trained churn models, for the serving tests and benchmark.

They are trained by the same pure functions the asset graph uses (simulate -> validate
-> split -> fit preprocessing -> train_challenger), only on a smaller customer base, so
the serving code is exercised against genuine fitted pipelines, never stand-ins.
"""

from __future__ import annotations

import pandas as pd

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.features import build_preprocessor
from churn_assets.storage.registry import ModelRegistry, ModelVersion
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.core.spec import load_spec
from churn_assets.core.training import ModelingFrames, WindowPlan, split_by_time, train_challenger
from churn_assets.core.validation import validate_records
from churn_assets.core.code_version import code_version

SAMPLE_AS_OF = "2026-05-04"


def sample_frames(n_customers: int = 600, as_of: str = SAMPLE_AS_OF) -> ModelingFrames:
    """Validated simulator history cut into train / validation / holdout weeks."""
    spec = load_spec("simulator")
    raw = simulate(SimulatorSettings(n_customers=n_customers), as_of)
    return split_by_time(validate_records(raw, spec), spec, WindowPlan(), pd.Timestamp(as_of))


def train_family(frames: ModelingFrames, family: str, seed: int = 42) -> ChurnPredictor:
    """A predictor of one model family, trained as the ``churn_model`` asset would."""
    spec = load_spec("simulator")
    preprocessor = build_preprocessor(spec).fit(frames.training_window)
    predictor, _ = train_challenger(frames, spec, preprocessor, families=[family], seed=seed,
                                    code_version=code_version(), trained_at="2026-05-04T03:00:00+00:00")
    return predictor


def register(registry: ModelRegistry, predictor: ChurnPredictor) -> ModelVersion:
    """Register ``predictor`` with a manifest shaped like the one ``deployed_model`` writes."""
    return registry.register(predictor, {
        "model_family": predictor.family,
        "threshold": predictor.threshold,
        "metrics": predictor.validation_metrics,
        "validation_metrics": predictor.validation_metrics,
        "feature_spec": predictor.spec.to_dict(),
        "data_window": predictor.data_window,
        "code_version": predictor.code_version,
        "fingerprint": predictor.fingerprint,
        "trained_at": predictor.trained_at,
    })

"""The pipeline on real customer data: IBM Telco through the file source."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

from churn_assets.core.features import build_preprocessor
from churn_assets.storage.registry import ModelRegistry
from churn_assets.sources.file import FileSource
from churn_assets.core.spec import load_spec
from churn_assets.core.training import MODEL_FAMILIES, WindowPlan, split_by_time, train_challenger
from churn_assets.core.validation import validate_records

from churn_assets_tests.conftest import metadata_of, run_graph

TELCO_WINDOW = {"training_window_weeks": 12, "validation_weeks": 2, "holdout_weeks": 2}


def test_telco_file_deploys_a_model_above_0_82_roc_auc(home, telco_csv):
    source = FileSource(path=str(telco_csv), snapshot_weeks=10)
    result = run_graph(home, source, spec="telco", window=TELCO_WINDOW)
    assert result.success
    report = metadata_of(result, "evaluation_report")
    assert report["holdout_rows"] > 1000
    assert report["1_roc_auc"] >= 0.82, report["1_roc_auc"]
    registry = ModelRegistry(home / "registry")
    assert registry.production().manifest["metrics"]["roc_auc"] >= 0.82


def test_deployed_artifact_gives_the_same_probabilities_in_a_fresh_process(telco_csv, tmp_path):
    spec = load_spec("telco")
    batch = FileSource(path=str(telco_csv), snapshot_weeks=10).fetch(spec, None)
    frames = split_by_time(validate_records(batch.records, spec), spec, WindowPlan(), batch.as_of)
    preprocessor = build_preprocessor(spec).fit(frames.training_window)
    model, _ = train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, "test", "now")
    # Raw rows as the file has them (blank TotalCharges included), scored by the
    # object that training produced, before it was ever serialized.
    records = pd.read_csv(telco_csv, dtype={"customerID": str}).head(500)
    in_training = model.predict_proba(records)
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(model, {"fingerprint": model.fingerprint})
    registry.promote(version.version, reason="test")
    records.to_csv(tmp_path / "rows.csv", index=False)
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd
        from churn_assets.storage.registry import ModelRegistry
        registry = ModelRegistry({str(tmp_path / "registry")!r})
        model = registry.load(registry.production())
        rows = pd.read_csv({str(tmp_path / "rows.csv")!r}, dtype={{"customerID": str}})
        np.save({str(tmp_path / "fresh.npy")!r}, model.predict_proba(rows))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    fresh = np.load(tmp_path / "fresh.npy")
    assert fresh.shape == (500,)
    np.testing.assert_allclose(fresh, in_training, rtol=0, atol=1e-12)
    assert len(np.unique(np.round(fresh, 6))) > 100  # real probabilities, not a constant

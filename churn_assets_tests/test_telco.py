"""The pipeline on real customer data: IBM Telco through the file source."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

from churn_assets.registry import ModelRegistry
from churn_assets.sources import FileSource

from churn_assets_tests.conftest import metadata_of, run_graph

TELCO_WINDOW = {"training_window_weeks": 12, "validation_weeks": 2, "holdout_weeks": 2}


def test_telco_file_deploys_a_model_above_0_82_roc_auc(home, shared_data):
    source = FileSource(path=str(shared_data / "telco.csv"), snapshot_weeks=10)
    result = run_graph(home, source, spec="telco", window=TELCO_WINDOW)
    assert result.success
    report = metadata_of(result, "evaluation_report")
    assert report["holdout_rows"] > 1000
    assert report["challenger_roc_auc"] >= 0.82, report["challenger_roc_auc"]
    registry = ModelRegistry(home / "registry")
    assert registry.production().manifest["metrics"]["roc_auc"] >= 0.82


def test_deployed_artifact_gives_the_same_probabilities_in_a_fresh_process(home, shared_data, tmp_path):
    source = FileSource(path=str(shared_data / "telco.csv"), snapshot_weeks=10)
    assert run_graph(home, source, spec="telco", window=TELCO_WINDOW).success
    registry = ModelRegistry(home / "registry")
    version = registry.production()
    model = registry.load(version)
    # Raw rows as the file has them, blank TotalCharges included.
    records = pd.read_csv(shared_data / "telco.csv", dtype={"customerID": str}).head(500)
    expected = model.predict_proba(records)
    records.to_csv(tmp_path / "rows.csv", index=False)
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd
        from churn_assets.registry import ModelRegistry
        registry = ModelRegistry({str(home / "registry")!r})
        model = registry.load(registry.get({version.version!r}))
        rows = pd.read_csv({str(tmp_path / "rows.csv")!r}, dtype={{"customerID": str}})
        np.save({str(tmp_path / "fresh.npy")!r}, model.predict_proba(rows))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    fresh = np.load(tmp_path / "fresh.npy")
    assert fresh.shape == (500,)
    np.testing.assert_allclose(fresh, expected, rtol=0, atol=1e-12)
    assert len(np.unique(np.round(fresh, 6))) > 100  # real probabilities, not a constant

"""The churn-assets command keeps Dagster's run history without DAGSTER_HOME being set."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg


def test_materialize_persists_the_dagster_instance_under_the_data_directory(tmp_path):
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 200\nas_of = "2026-02-02"\n')
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(CHURN_ASSETS_HOME=str(tmp_path / "home"), CHURN_ASSETS_CONFIG=str(config))
    cli = Path(sys.executable).with_name("churn-assets")
    for _ in range(2):
        done = subprocess.run([str(cli), "materialize", "--select", "raw_customers"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    dagster_home = tmp_path / "home" / "dagster"
    assert (dagster_home / "dagster.yaml").read_text().count("max_concurrent_runs: 1") == 1
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)

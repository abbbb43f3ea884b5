"""The terminal side of model health: run summaries, versions, model cards, rollbacks seen by Dagster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from churn_assets import cli

from churn_assets_tests.conftest import FIRST_WEEK, NEXT_WEEK

FAST = ["--families", "logistic_regression"]


@pytest.fixture
def churn_env(tmp_path, monkeypatch):
    """A data directory and a config for in-process ``churn-assets`` commands."""
    home = tmp_path / "home"
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 1000\n')
    monkeypatch.setenv("CHURN_ASSETS_HOME", str(home))
    monkeypatch.setenv("CHURN_ASSETS_CONFIG", str(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    # A ReconstructableJob memoizes its loaded definition by value (lru_cache): in one
    # process, the previous test's settings would be reused. Each CLI call is a fresh
    # process in real use, so clearing the cache is what makes this test like it.
    from dagster._core.definitions.reconstruct import ReconstructableJob

    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    return home, config


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_materialize_summary_then_versions_card_and_rollback_reported_to_dagster(churn_env, capsys):
    home, _ = churn_env
    code, out, err = run_cli(capsys, "materialize", "--as-of", FIRST_WEEK, *FAST)
    assert code == 0, out + err
    # One line per finished step, then the summary; Dagster's DEBUG stream is in the log file.
    steps = re.findall(r"^  done\s+(\S+) \(\d+\.\d s\)$", out, flags=re.M)
    assert steps.index("raw_customers") < steps.index("evaluation_report") < steps.index("deployed_model")
    assert "RUN_START" not in out + err and "STEP_START" not in out + err
    log_file = Path(re.search(r"Dagster log: (\S+)\)", out).group(1))
    assert log_file.parent == home / "logs" and "STEP_SUCCESS - deployed_model" in log_file.read_text()
    assert re.search(r"^  records fetched: \d+ \(simulator", out, flags=re.M)
    assert re.search(r"^  history rows: \d+", out, flags=re.M)
    assert "chosen family: logistic_regression" in out
    assert "gate: pass (bootstrap" in out and "production: v0001 (new, first version)" in out
    assert "None" not in out

    code, out, err = run_cli(capsys, "materialize", "--as-of", NEXT_WEEK, *FAST)
    assert code == 0, out + err
    assert "challenger vs champion v0001" in out
    assert re.search(r"^    roc_auc\s+0\.\d{4} vs 0\.\d{4}  delta [+-]0\.\d{4} \(95% CI ", out, flags=re.M)
    assert "production: v0002 (new, replaces v0001)" in out
    assert re.search(r"^  risk list: \d+ customers scored by v0002$", out, flags=re.M)

    code, out, _ = run_cli(capsys, "versions", "--json")
    listing = json.loads(out)
    assert listing["production"] == "v0002" and listing["candidates"] == []
    v2 = listing["versions"][1]
    assert v2["champion_version"] == "v0001" and v2["gate_passed"] is True
    assert v2["ci_low"] < v2["delta_roc_auc"] < v2["ci_high"]
    code, out, _ = run_cli(capsys, "versions")
    assert max(len(line) for line in out.splitlines()) <= 120, out
    assert re.search(r"^\* v0002  registered \d{4}-\d\d-\d\d \d\d:\d\d UTC  data as of 2026-05-11"
                     r"  holdout \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d$", out, flags=re.M), out
    assert re.search(r"^ {9}ROC AUC 0\.\d{4}, [+-]0\.\d{4} (better|worse|equal) \(95% CI ", out, flags=re.M), out
    assert re.search(r"Brier score [+-]0\.\d{4} (better|worse|equal)", out)
    assert "['" not in out and "None" not in out
    assert re.search(r"^  \S+ \S+ UTC  v0002 promoted by run \w{8} \(passed gate against v0001\)$", out, flags=re.M)

    card_file = home / "registry" / "versions" / "v0002" / "card.md"
    # The stored card, with its current status under the title.
    title, _, rest = card_file.read_text().partition("\n")
    printed = run_cli(capsys, "card")[1]
    assert re.fullmatch(r"> In production since \S+ \S+ UTC\.", printed.splitlines()[2]), printed[:300]
    assert printed.splitlines()[0] == title and printed.endswith(rest)
    assert run_cli(capsys, "card", "v0001")[1].startswith("# Model card: churn model v0001")
    code, _, err = run_cli(capsys, "card", "v0042")
    assert code == 2 and "v0042" in err

    code, out, err = run_cli(capsys, "rollback")
    assert code == 0 and "production is now v0001 (was v0002), pinned by " in out, err
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        [event] = instance.fetch_materializations(dg.AssetKey("deployed_model"), limit=1).records
        scores = instance.get_latest_materialization_event(dg.AssetKey("churn_scores"))
    assert event.run_id == ""  # runless: reported outside any run
    metadata = event.asset_materialization.metadata
    assert metadata["production_version"].value == "v0001"
    assert metadata["pinned"].value.startswith("pinned by ") and "(churn-assets rollback)" in metadata["pinned"].value
    # The page shows the history with the rollback and the card of the version rolled back to.
    assert "v0001 rolled back from v0002, pinned by " in metadata["history"].value
    assert metadata["card_version"].value == "v0001"
    assert metadata["model_card"].value.startswith("# Model card: churn model v0001\n\n> In production since ")
    # The risk list was rescored with v0001 at once, by a run the UI shows.
    assert "risk list: " in out and "scored by v0001" in out
    assert scores.asset_materialization.metadata["production_version"].value == "v0001"
    assert set(pd.read_parquet(home / "scores" / "churn_scores.parquet")["model_version"]) == {"v0001"}
    assert run_cli(capsys, "card")[1].startswith("# Model card: churn model v0001")
    code, out, _ = run_cli(capsys, "versions")
    assert re.search(r"^production: v0001 since .*, pinned by ", out, flags=re.M), out
    assert re.search(r"^risk list: \d+ customers scored by v0001 at ", out, flags=re.M), out
    assert re.search(r"^  \S+ \S+ UTC  v0001 rolled back from v0002, pinned by ", out, flags=re.M), out


def test_blocked_run_names_the_failing_rule_and_is_listed_as_a_refused_candidate(churn_env, capsys):
    home, config = churn_env
    config.write_text(config.read_text() + '\n[[gate.rules]]\nmetric = "roc_auc"\nfloor = 0.99\n')
    code, out, err = run_cli(capsys, "materialize", "--as-of", FIRST_WEEK, *FAST)
    assert code == 4  # refused: its own exit code (README, "Running a refresh")
    assert "Traceback" not in out + err
    reason = err.strip().splitlines()[-1]
    assert re.fullmatch(r"churn-assets materialize: deployment refused: "
                        r"ROC AUC is 0\.\d{3}, below the floor of 0\.99; nothing is in production yet", reason), reason
    assert "gate: refused: ROC AUC" in out and "production:" not in out
    run_id = re.search(r"^run (\S+): refused by the gate", out, flags=re.M).group(1)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_run_by_id(run_id).tags["churn_assets/outcome"] == "refused"

    code, out, _ = run_cli(capsys, "versions", "--json")
    listing = json.loads(out)
    assert listing["versions"] == [] and listing["production"] is None
    [candidate] = listing["candidates"]
    assert candidate["recorded_by"] == "deployment_gate" and candidate["model_family"] == "logistic_regression"
    assert re.fullmatch(r"roc_auc: 0\.\d{4} is below the floor 0\.99", candidate["failed_rules"][0])
    assert candidate["refused_in_words"] == [reason.split("refused: ", 1)[1].split("; nothing")[0]]
    code, out, _ = run_cli(capsys, "versions")
    assert "challengers not deployed (1):" in out and "x refused" in out and "below the floor of 0.99" in out


def test_validation_failure_ends_with_the_failing_columns_on_one_line(churn_env, tmp_path, capsys):
    from churn_assets.core.spec import load_spec
    from churn_assets_tests.conftest import simulator

    home, config = churn_env
    records = simulator(FIRST_WEEK, n_customers=200).fetch(load_spec("simulator"), None).records
    export = tmp_path / "export.csv"
    records.drop(columns=["plan"]).to_csv(export, index=False)
    config.write_text(f'[source]\nkind = "file"\npath = "{export}"\n')
    code, out, err = run_cli(capsys, "materialize", *FAST)
    assert code == 1 and "Traceback" not in out + err
    assert re.search(r"^run \S+: FAILED$", out, flags=re.M)
    reason = err.strip().splitlines()[-1]
    assert reason.startswith("churn-assets materialize: failed at clean_features: records do not match the"
                             " 'simulator' feature spec: column 'plan' is missing"), reason
    assert "  FAILED   clean_features: records do not match" in out
    assert not (home / "registry" / "versions").exists()


def test_new_and_vanished_source_columns_are_reported_in_metadata_and_the_summary(tmp_path, churn_env, capsys):
    # An API that sends loyalty_tier, stops, then sends promo_code: the first was stored
    # silently, the last failed every refresh from then on ("new records bring columns the
    # history does not have"). Now raw_customers' metadata and the summary name each change.
    import pandas as pd

    from churn_assets.sources.simulation import SimulatorSettings, simulate
    from churn_assets.storage.history import CustomerHistory

    home, config = churn_env
    weeks = simulate(SimulatorSettings(n_customers=1000), "2026-05-18")
    newest, week = weeks["snapshot_date"].max(), pd.Timedelta(days=7)
    exports = {"with": weeks[weeks["snapshot_date"] < newest - week].assign(loyalty_tier="gold"),
               "without": weeks[weeks["snapshot_date"] == newest - week],
               "promo": weeks[weeks["snapshot_date"] == newest].assign(promo_code="SPRING")}
    summaries, metadata = [], []
    for name, frame in exports.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        config.write_text(f'[source]\nkind = "file"\npath = "{tmp_path / name}.csv"\n')
        code, out, err = run_cli(capsys, "materialize", "--select", "raw_customers,clean_features")
        assert code == 0, err
        summaries.append(out)
        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("raw_customers"))
        metadata.append({k: v.value for k, v in event.asset_materialization.metadata.items()})
    assert metadata[0]["source_columns_not_in_spec"] == metadata[0]["new_source_columns"] == ["loyalty_tier"]
    assert "source columns changed: new loyalty_tier (not in the feature spec: stored, not used)" in summaries[0]
    assert metadata[1]["vanished_source_columns"] == ["loyalty_tier"] and metadata[1]["new_source_columns"] == []
    assert "source columns changed: vanished loyalty_tier" in summaries[1]
    assert metadata[2]["new_source_columns"] == metadata[2]["source_columns_not_stored"] == ["promo_code"]
    assert ("source columns changed: new promo_code (not in the feature spec: kept in the landed batch,"
            " not in the history); vanished loyalty_tier") in summaries[2]
    stored = CustomerHistory(home / "history").load()
    assert "loyalty_tier" in stored.columns and "promo_code" not in stored.columns
    assert stored["snapshot_date"].max() == newest  # the promo_code week was stored
    landed = sorted((home / "landing").glob("batch-*.parquet"))[-1]
    assert "promo_code" in pd.read_parquet(landed).columns  # as the source sent it

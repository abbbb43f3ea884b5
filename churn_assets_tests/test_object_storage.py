"""The data directory on object storage: a real S3 API (moto's server) on loopback.

Every test talks HTTP to a ``moto.server.ThreadedMotoServer`` through s3fs, exactly as
production talks to S3 or MinIO; the endpoint and the keys come from the AWS variables.
The process's working directory is an empty temporary folder, so a test can check that
an s3:// home never writes anything locally.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
from churn_assets.defs.io_managers import JoblibIOManager, step_output_io_manager
from churn_assets.serving.model_store import ModelStore
from churn_assets.settings import Settings, SettingsError, load_settings
from churn_assets.storage import location
from churn_assets.storage.candidates import CandidateLog
from churn_assets.storage.health_log import HealthLog
from churn_assets.storage.history import CustomerHistory
from churn_assets.storage.object_registry import ObjectModelRegistry, open_registry
from churn_assets.storage.registry import IntegrityError, ModelRegistry
from churn_assets_tests.conftest import FIRST_WEEK, PERMISSIVE_RULES, simulator

KEYS = ["customer_id", "snapshot_date"]


@pytest.fixture(scope="module")
def moto_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """(endpoint, bucket, boto3 client) with the AWS variables set and an empty cwd."""
    for key, value in aws_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    bucket = f"churn-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    return moto_endpoint, bucket, client


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def get_json(client, bucket: str, key: str) -> dict:
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def snapshots(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "snapshot_date", "spend"]).assign(
        snapshot_date=lambda f: pd.to_datetime(f["snapshot_date"]))


# -- settings -------------------------------------------------------------------------------

def test_home_may_be_an_s3_url_and_other_schemes_are_refused_at_load_time(tmp_path):
    home = load_settings({"CHURN_ASSETS_HOME": "s3://churn-data/prod/"}).home
    assert location.is_remote(home) and str(home) == "s3://churn-data/prod"
    config = tmp_path / "churn.toml"
    config.write_text('home = "s3://churn-data/team"\n')
    assert str(load_settings({"CHURN_ASSETS_CONFIG": str(config)}).home) == "s3://churn-data/team"
    for bad, why in (("gs://churn-data/x", "not gs://"), ("s3://Bad_Bucket/x", "bucket names")):
        with pytest.raises(SettingsError, match=f"home: .*{why}"):
            load_settings({"CHURN_ASSETS_HOME": bad})
        with pytest.raises(ValueError, match=why):  # a location handed to storage in code
            location.location(bad)
    # A local home is unchanged: a plain pathlib.Path, relative to the config file.
    config.write_text('home = "data"\n')
    assert load_settings({"CHURN_ASSETS_CONFIG": str(config)}).home == tmp_path / "data"
    assert type(Settings(home=tmp_path).home) is type(tmp_path)


# -- history --------------------------------------------------------------------------------

def test_history_upserts_and_reads_windows_on_s3_like_a_local_history(s3, tmp_path):
    _, bucket, client = s3
    remote = CustomerHistory(f"s3://{bucket}/home/history")
    local = CustomerHistory(tmp_path / "local" / "history")
    first = snapshots([("C1", "2026-04-06", 1.0), ("C2", "2026-04-07", 2.0),
                       ("C1", "2026-04-13", 3.0), ("C3", "2026-04-21", 4.0)])
    second = snapshots([("C1", "2026-04-13", 30.0), ("C4", "2026-04-22", 5.0), ("C3", "2026-04-21", 4.0)])
    for history in (remote, local):
        assert history.weeks() == [] and history.load() is None
        history.upsert(first, KEYS, state={"watermark": "a"})
        summary = history.upsert(second, KEYS, state={"watermark": "b"})
        assert (summary.inserted, summary.updated, summary.unchanged, summary.total_rows) == (1, 1, 1, 5)
    assert keys(client, bucket) == ["home/history/state.json", "home/history/weeks/2026-04-06.parquet",
                                    "home/history/weeks/2026-04-13.parquet",
                                    "home/history/weeks/2026-04-20.parquet"]
    assert remote.weeks() == local.weeks()
    assert remote.state() == local.state() == {"watermark": "b"}
    pd.testing.assert_frame_equal(remote.load(), local.load())
    window = remote.load(since="2026-04-13", until="2026-04-21", columns=["spend"])
    pd.testing.assert_frame_equal(window, local.load(since="2026-04-13", until="2026-04-21", columns=["spend"]))
    assert window["spend"].tolist() == [30.0, 4.0]
    assert not any(Path.cwd().iterdir()), "an s3:// history wrote into the working directory"


# -- registry -------------------------------------------------------------------------------

def test_registry_on_s3_registers_promotes_rolls_back_and_refuses_a_tampered_model(s3):
    _, bucket, client = s3
    registry = open_registry(f"s3://{bucket}/home/registry")
    assert isinstance(registry, ObjectModelRegistry) and registry.production() is None
    assert type(open_registry(Path.cwd() / "local-registry")) is ModelRegistry  # a path stays local
    v1 = registry.register({"weights": [1, 2, 3]}, {"family": "a"})
    v2 = registry.register({"weights": [4, 5, 6]}, {"family": "b"})
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert registry.load(v2) == {"weights": [4, 5, 6]}
    registry.promote("v0002", reason="test", run_id="r1")
    pointer = get_json(client, bucket, "home/registry/production.json")
    assert (pointer["version"], pointer["sha256"]) == ("v0002", v2.sha256)
    back = registry.rollback()
    assert back["version"] == "v0001" and registry.production().version == "v0001"
    events = client.get_object(Bucket=bucket, Key="home/registry/events.jsonl")["Body"].read().splitlines()
    assert [json.loads(e)["version"] for e in events] == ["v0002", "v0001"]
    # A reader in another process (a fresh registry object) sees the same thing.
    assert open_registry(f"s3://{bucket}/home/registry").production().version == "v0001"

    # Replace v0002's artifact behind the registry's back: never unpickled, never promoted.
    client.put_object(Bucket=bucket, Key="home/registry/versions/v0002/model.joblib", Body=b"not a model")
    with pytest.raises(IntegrityError, match="does not match the registered"):
        registry.load(registry.get("v0002"))
    with pytest.raises(IntegrityError, match="missing or altered; not promoting"):
        registry.promote("v0002", reason="test")
    assert registry.production().version == "v0001"
    # A damaged manifest is reported and skipped; the rest of the registry still works.
    client.put_object(Bucket=bucket, Key="home/registry/versions/v0002/manifest.json", Body=b"{")
    assert [v.version for v in registry.versions()] == ["v0001"]
    assert any("v0002/manifest.json: is not valid JSON" in str(p) for p in registry.problems())
    assert registry.register({"weights": []}, {}).version == "v0003"  # v0002's number stays used
    # A writer that died after claiming v0009: reported, skipped, its number never reused.
    client.put_object(Bucket=bucket, Key="home/registry/versions/v0009/.claim", Body=b"{}")
    assert [v.version for v in registry.versions()] == ["v0001", "v0003"]
    assert any("v0009/manifest.json: is missing" in str(p) for p in registry.problems())
    assert registry.register({"weights": []}, {}).version == "v0010"


def test_concurrent_registrations_on_s3_get_distinct_versions(s3):
    _, bucket, _ = s3
    root = f"s3://{bucket}/registry"
    got, errors = [], []

    def register(i):
        try:
            got.append(open_registry(root).register({"i": i}, {"i": i}).version)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == ["v0001", "v0002", "v0003", "v0004"]
    registry = open_registry(root)
    assert sorted(registry.load(v)["i"] for v in registry.versions()) == [0, 1, 2, 3]


def test_jsonl_logs_on_s3_lose_no_line_to_concurrent_appends(s3):
    _, bucket, _ = s3
    candidates = CandidateLog(f"s3://{bucket}/registry")
    health = HealthLog(f"s3://{bucket}/health")

    def write(i):
        candidates.record({"run_id": f"r{i}", "challenger_fingerprint": "f"})
        health.append({"kind": "drift", "version": "v0001", "week": str(i)})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read = candidates.read()
    assert sorted(e["run_id"] for e in read.entries) == [f"r{i}" for i in range(6)] and not read.problems
    assert sorted(r["week"] for r in health.records("drift")) == [str(i) for i in range(6)]


# -- step outputs -----------------------------------------------------------------------------

def test_io_managers_keep_step_outputs_on_s3(s3):
    _, bucket, client = s3

    @dg.asset(io_manager_key="model_io_manager")
    def fitted() -> dict:
        return {"coef": [0.5, 1.5]}

    @dg.asset
    def table(fitted: dict) -> pd.DataFrame:
        return pd.DataFrame({"coef": fitted["coef"]})

    @dg.asset
    def total(table: pd.DataFrame, fitted: dict) -> float:
        return float(table["coef"].sum()) + len(fitted["coef"])

    home = location.location(f"s3://{bucket}/home")
    resources = {"io_manager": step_output_io_manager(home / "dagster_storage"),
                 "model_io_manager": JoblibIOManager(base_dir=f"s3://{bucket}/home/artifacts")}
    result = dg.materialize([fitted, table, total], resources=resources)
    assert result.success
    assert keys(client, bucket) == ["home/artifacts/fitted.joblib", "home/dagster_storage/table",
                                    "home/dagster_storage/total"]
    # A second run (another worker) loads what the first stored.
    again = dg.materialize([fitted, table, total], resources=resources, selection=["total"])
    assert again.success and again.output_for_node("total") == 4.0
    assert not any(Path.cwd().iterdir())


# -- the whole graph ---------------------------------------------------------------------------

def materialize_on(home: str):
    settings = Settings(home=home).with_rules(PERMISSIVE_RULES)
    return dg.materialize(ASSETS + CHECKS, resources=build_resources(settings, source=simulator(FIRST_WEEK, 600)),
                          run_config={"ops": {"churn_model": {"config": {"families": ["logistic_regression"]}}}},
                          raise_on_error=False)


def test_the_graph_runs_with_its_home_on_s3_and_the_model_is_served_from_there(s3):
    _, bucket, client = s3
    result = materialize_on(f"s3://{bucket}/home")
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    stored = keys(client, bucket, "home/")
    for expected in ("home/registry/production.json", "home/registry/versions/v0001/model.joblib",
                     "home/registry/versions/v0001/manifest.json", "home/registry/versions/v0001/card.md",
                     "home/scores/churn_scores.parquet", "home/history/state.json",
                     "home/artifacts/fitted_scaler.joblib", "home/artifacts/churn_model.joblib",
                     "home/dagster_storage/clean_features"):
        assert expected in stored, (expected, stored)
    assert any(k.startswith("home/landing/batch-") for k in stored)
    assert any(k.startswith("home/decisions/") for k in stored)
    assert get_json(client, bucket, "home/registry/production.json")["version"] == "v0001"
    assert not any(Path.cwd().iterdir()), "an s3:// home wrote into the working directory"

    # Serving follows the pointer object: loads v0001, then a promotion of v0002.
    store = ModelStore(f"s3://{bucket}/home/registry")
    store.refresh()
    assert store.current is not None and store.current.version == "v0001", store.problem
    registry = open_registry(f"s3://{bucket}/home/registry")
    v2 = registry.register(registry.load(registry.get("v0001")), dict(registry.get("v0001").manifest))
    registry.promote(v2.version, reason="test")
    store.refresh()
    assert store.current.version == "v0002" and store.problem is None
    # A tampered artifact is refused; the verified model keeps serving.
    client.put_object(Bucket=bucket, Key="home/registry/versions/v0001/model.joblib", Body=b"evil")
    # (promote would refuse it, so the pointer is written by hand, as an attacker would)
    client.put_object(Bucket=bucket, Key="home/registry/production.json",
                      Body=json.dumps({"version": "v0001", "sha256": registry.get("v0001").sha256}).encode())
    store.refresh()
    assert store.current.version == "v0002" and "does not match the registered" in store.problem


def test_a_missing_bucket_or_unreachable_endpoint_fails_naming_the_url_and_touches_nothing(s3, monkeypatch):
    endpoint, bucket, client = s3
    result = materialize_on(f"s3://no-such-{bucket}/home")
    assert not result.success
    failure = " ".join(f"{e.message} {e.event_specific_data!r}" for e in result.all_events if e.is_failure)
    assert f"s3://no-such-{bucket}/home: bucket 'no-such-{bucket}' does not exist" in failure, failure
    assert keys(client, bucket) == []
    assert not any(Path.cwd().iterdir())

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(location.StorageLocationError, match=rf"s3://{bucket}/home: .*cannot be reached"):
        location.check_reachable(location.location(f"s3://{bucket}/home"))
    assert time.monotonic() - started < 60
    # The server does not crash on it either: /ready says why, the next poll retries.
    store = ModelStore(f"s3://{bucket}/home/registry")
    store.refresh()
    assert store.current is None
    assert f"cannot read the production pointer: s3://{bucket}/home/registry/production.json" in store.problem
    assert not any(Path.cwd().iterdir())


def test_the_cli_refreshes_an_s3_home_keeping_its_instance_and_logs_on_this_machine(s3, tmp_path):
    """``churn-assets materialize`` on an s3:// home: the data goes to the bucket, the
    Dagster instance, the run log and the refresh lock stay in ``[dagster] local_dir``."""
    import os
    import subprocess
    import sys

    _, bucket, client = s3
    local = tmp_path / "machine"
    config = tmp_path / "churn.toml"
    config.write_text(f'home = "s3://{bucket}/home"\n'
                      '[source]\nkind = "simulator"\nn_customers = 300\n'
                      f'[dagster]\nlocal_dir = "{local}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHURN_ASSETS_HOME")}
    env["CHURN_ASSETS_CONFIG"] = str(config)
    cli = str(Path(sys.executable).with_name("churn-assets"))
    done = subprocess.run([cli, "materialize", "--as-of", FIRST_WEEK, "--families", "logistic_regression"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert get_json(client, bucket, "home/registry/production.json")["version"] == "v0001"
    assert not any(k.startswith("home/dagster/") or k.startswith("home/logs/") for k in keys(client, bucket))
    assert (local / "dagster" / "dagster.yaml").exists() and any((local / "logs").iterdir())
    with dg.DagsterInstance.from_config(str(local / "dagster")) as instance:
        assert [run.status for run in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS]
    listed = subprocess.run([cli, "versions", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert '"v0001"' in listed.stdout
    assert not any(Path.cwd().iterdir())


# -- faults the user sees from the command line ------------------------------------------------

def _cli(args: list[str], env: dict, tmp_path: Path):
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHURN_ASSETS_CONFIG")}
    config = tmp_path / "churn.toml"
    config.write_text(f'[dagster]\nlocal_dir = "{tmp_path / "machine"}"\n')
    full.update(CHURN_ASSETS_CONFIG=str(config), **env)
    return subprocess.run([str(Path(sys.executable).with_name("churn-assets")), *args], env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [["versions"], ["materialize", "--as-of", FIRST_WEEK], ["rollback"]])
def test_the_cli_names_a_missing_bucket_and_a_dead_endpoint_in_one_line(s3, tmp_path, args):
    endpoint, bucket, client = s3
    cases = [(endpoint, f"s3://no-such-{bucket}/home: bucket 'no-such-{bucket}' does not exist at {endpoint};"
                        " create it first"),
             ("http://127.0.0.1:9", f"s3://{bucket}/home: object storage at http://127.0.0.1:9 cannot be reached")]
    for url, expected in cases:
        home = f"s3://{bucket}/home" if url.endswith(":9") else f"s3://no-such-{bucket}/home"
        done = _cli(args, {**aws_env(url), "CHURN_ASSETS_HOME": home}, tmp_path)
        assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"churn-assets {args[0]}: ") and expected in lines[0], lines
        assert "no model versions" not in done.stdout
    assert keys(client, bucket) == []


def test_a_run_whose_storage_cannot_start_says_why_in_its_summary_and_its_log(s3, tmp_path, monkeypatch):
    # A run the CLI's own check did not stop (the daemon's, or a bucket deleted meanwhile):
    # the resource fails before any step, and the summary and the log still say why.
    import io

    from churn_assets.cli import prepare_dagster_home
    from churn_assets.defs.launch import refresh_run_config, run_refresh
    from churn_assets.defs.run_progress import RunWatcher, failure_line, run_summary

    _, bucket, _ = s3
    monkeypatch.setenv("CHURN_ASSETS_HOME", f"s3://no-such-{bucket}/home")
    monkeypatch.delenv("CHURN_ASSETS_CONFIG", raising=False)
    local = tmp_path / "machine"
    log, out = io.StringIO(), io.StringIO()
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(local))) as instance:
        watcher = RunWatcher(instance, log, out)
        watcher.start()
        result = run_refresh(local, instance, refresh_run_config(FIRST_WEEK), "raw_customers")
        watcher.finish(result.run_id)
        success, lines = run_summary(instance, result.run_id)
    reason = f"s3://no-such-{bucket}/home: bucket 'no-such-{bucket}' does not exist"
    assert not success
    assert failure_line(success, lines).startswith(f"failed at start-up: {reason}"), lines
    assert reason in log.getvalue()

"""Shared fixtures: the asset graph run in-process against a temporary data directory."""

import os

# One OpenMP thread per test process: on a shared 2-core machine, spinning OpenMP
# workers of parallel test processes slow each other down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from churn_assets.defs.alerts import WEBHOOK_ENV

from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
from churn_assets.core.gate import GateRule
from churn_assets.defs.model import ModelConfig
from churn_assets.defs.resources import TrainingPlan
from churn_assets.settings import Settings
from churn_assets.sources.simulator import SimulatorSource
from churn_assets.core.spec import LABEL
from churn_assets.core.training import ModelingFrames, train_challenger
from churn_assets.core.code_version import code_version

TELCO_CSV = Path(__file__).resolve().parents[1] / "examples" / "data" / "telco.csv"
TELCO_SHA256 = "16320c9c1ec72448db59aa0a26a0b95401046bef5d02fd3aeb906448e3055e91"
# Enough simulated history for a 12-week window + 2 validation + 2 holdout weeks
# plus the 28-day label horizon; a week later for the second run.
FIRST_WEEK = "2026-05-04"
NEXT_WEEK = "2026-05-11"
PERMISSIVE_RULES = (GateRule("roc_auc", floor=0.0, max_regression=0.005),)


def simulator(as_of: str, n_customers: int = 1000) -> SimulatorSource:
    return SimulatorSource(n_customers=n_customers, as_of=as_of)


def run_graph(home: Path, source, *, rules=None, assets=None, selection=None, spec="simulator",
              window=None, instance=None, run_config=None) -> dg.ExecuteInProcessResult:
    settings = Settings(home=Path(home), spec=spec, window=window or {})
    if rules is not None:
        settings = settings.with_rules(rules)
    return dg.materialize(
        assets or (ASSETS + CHECKS),
        resources=build_resources(settings, source=source),
        selection=selection,
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )


@dg.asset(name="churn_model", group_name="churn", io_manager_key="model_io_manager")
def shuffled_label_churn_model(config: ModelConfig, clean_features: ModelingFrames, fitted_scaler,
                               training_plan: TrainingPlan) -> dg.MaterializeResult:
    """A challenger that learned nothing: trained on labels shuffled within each split."""
    rng = np.random.default_rng(0)
    train, validation = clean_features.train.copy(), clean_features.validation.copy()
    train[LABEL] = rng.permutation(train[LABEL].to_numpy())
    validation[LABEL] = rng.permutation(validation[LABEL].to_numpy())
    frames = ModelingFrames(train, validation, clean_features.holdout, clean_features.as_of,
                            clean_features.label_cutoff, clean_features.held_back_rows)
    predictor, _ = train_challenger(frames, training_plan.feature_spec(), fitted_scaler,
                                    ["logistic_regression"], config.seed, code_version(), "test")
    return dg.MaterializeResult(value=predictor)


def with_shuffled_labels() -> list:
    return [shuffled_label_churn_model if dg.AssetKey("churn_model") in a.keys else a
            for a in ASSETS] + CHECKS


def _files_under(home: Path, folder: str) -> dict:
    """Every file below ``home/folder`` with its bytes; equal snapshots mean nothing changed."""
    root = Path(home) / folder
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def registry_snapshot(home: Path) -> dict:
    # candidates.jsonl logs refused challengers: a refusal appends to it by design, while
    # versions, the production pointer and the promotion events must stay as they were.
    return {k: v for k, v in _files_under(home, "registry").items() if k != "candidates.jsonl"}


def history_snapshot(home: Path) -> dict:
    """The customer history and its watermark (state.json)."""
    return _files_under(home, "history")


def guarded_state(home: Path) -> dict:
    """Everything a failed refresh must leave alone: history, watermark, registry, pointer."""
    return {"history": history_snapshot(home), "registry": registry_snapshot(home)}


def production_version(home: Path) -> str | None:
    pointer = Path(home) / "registry" / "production.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def gate_evaluation(result: dg.ExecuteInProcessResult):
    """The deployment gate's evaluation in ``result`` (other checks, e.g. drift, aside)."""
    gates = [e for e in result.get_asset_check_evaluations() if e.check_name == "deployment_gate"]
    return gates[0] if gates else None


def check_passed(result: dg.ExecuteInProcessResult) -> bool | None:
    evaluation = gate_evaluation(result)
    return evaluation.passed if evaluation else None


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise KeyError(f"{asset} was not materialized")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "churn_home"


@pytest.fixture
def telco_csv() -> Path:
    """The IBM Telco export that ships with the project (examples/data/README.md)."""
    path = TELCO_CSV
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == TELCO_SHA256, f"{path} is not the published Telco export (sha256 {digest})"
    return path


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch):
    """A real Slack-style webhook receiver on loopback; ``server.posts`` holds the JSON."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A bootstrap deploy (v0001), then a weekly refresh promoted against it (v0002); one
    data directory per test module that asks for it."""
    home = tmp_path_factory.mktemp("two_runs") / "home"
    first = run_graph(home, simulator(FIRST_WEEK))
    second = run_graph(home, simulator(NEXT_WEEK))
    assert first.success and second.success
    return home, first, second

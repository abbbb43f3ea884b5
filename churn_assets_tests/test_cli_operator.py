"""The command line an operator meets: --help, info, `dev` stopping on a signal, CLI runs
attached to the code location, and a refusal that names the version that stays."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from churn_assets import cli
from churn_assets.defs.liveness import PID_TAG, run_liveness
from churn_assets.defs.outcome import OUTCOME_TAG, settle_outcome
from churn_assets_tests.conftest import FIRST_WEEK, NEXT_WEEK
from churn_assets_tests.test_cli_report import FAST, churn_env, run_cli  # noqa: F401 - fixture

CLI = str(Path(sys.executable).with_name("churn-assets"))


def subcommands() -> list[str]:
    parser = cli.build_parser()
    return list(parser._subparsers._group_actions[0].choices)


def test_every_subcommand_has_a_one_line_description():
    listing = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60).stdout
    for name in subcommands():
        # In the overview: the name and a description (on its line or the next).
        assert re.search(rf"^    {re.escape(name)}\s+\S.*$|^    {re.escape(name)}\n\s{{10,}}\S", listing,
                         flags=re.M), (name, listing)
        own = subprocess.run([CLI, name, "--help"], capture_output=True, text=True, timeout=60).stdout
        # Its own --help: a description paragraph between the usage and the arguments.
        body = own.split("\n\n")
        assert len(body) >= 3 and not body[1].lstrip().startswith(("options:", "positional")), (name, own)
    assert {"rollback", "promote", "unpin", "card", "info", "check-config", "dev"} <= set(subcommands())


def test_info_shows_the_window_each_gate_rule_and_the_schedule(tmp_path):
    env = dict(os.environ, CHURN_ASSETS_HOME=str(tmp_path))
    env.pop("CHURN_ASSETS_CONFIG", None)
    out = subprocess.run([CLI, "info"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert ("window: the evaluated fit learns 10 weeks ending 28 days before 2 validation weeks, then 2 holdout"
            " weeks; the deployed fit learns the newest 10 weeks with final labels") in out
    assert ("ROC AUC >= 0.7, and not clearly lower than the champion's by more than 0.0025"
            " (noninferiority at 95%)") in out
    assert ("ROC AUC: not clearly lower than the best of the recent versions' by more than 0.01"
            " (noninferiority at 95%)") in out
    assert "Brier skill (share of the base rate's Brier score removed) >= 0" in out
    assert "schedule: weekly_refresh, cron 0 3 * * 1 (UTC)" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    pairs = [tuple(map(int, line.split())) for line in
             subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines()]
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in pairs if ppid == parent]
        found.update(children)
        todo += children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_dev_stops_within_5_seconds_of_a_signal_without_warnings(tmp_path, signum):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHURN_ASSETS_CONFIG")}
    env.update(CHURN_ASSETS_HOME=str(tmp_path / "home"))
    dev = subprocess.Popen([CLI, "dev", "--port", str(port)], env=env, cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert dev.poll() is None, dev.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI never answered"
                time.sleep(1)
        processes = descendants(dev.pid)
        assert len(processes) >= 3  # dagster dev, its webserver and daemon (and code servers)
        dev.send_signal(signum)
        # Bounded: the whole tree is down 5 s after the signal, not merely asked to stop.
        dev.wait(timeout=5)
        assert not [p for p in processes if running(p)]
    finally:
        if dev.poll() is None:
            dev.kill()
        output = dev.communicate(timeout=30)[0]
    assert dev.returncode == 0, output
    assert "Warning" not in output and "Traceback" not in output, output
    assert f"{signal.Signals(signum).name} received; stopping the UI and daemon" in output


def test_cli_runs_belong_to_the_code_location_and_survive_a_re_execution_from_the_ui(churn_env, capsys):  # noqa: F811
    from dagster._core.workspace.load_target import ModuleTarget

    import churn_assets

    home, _ = churn_env
    code, out, err = run_cli(capsys, "materialize", "--as-of", FIRST_WEEK, *FAST)
    assert code == 0, err
    run_id = re.search(r"^run (\S+): ", out, flags=re.M).group(1)
    # What the UI of `churn-assets dev` (dagster dev -m churn_assets) loads.
    location = ModuleTarget("churn_assets", None, None, None).create_origins()[0].location_name
    repository = churn_assets.definitions().get_repository_def().name
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(run_id)
        origin = run.remote_job_origin
        assert origin is not None, "a run without origin is left off the UI's front page"
        assert (origin.location_name, origin.repository_origin.repository_name, origin.job_name) == (
            location, repository, "churn_refresh")
        assert run.job_code_origin is not None and run.tags[OUTCOME_TAG] == "deployed"

        # The UI re-executes a run with its parent's tags: this run's pid tag is the CLI
        # process's. The re-execution must not be judged dead for it, nor keep its outcome.
        tags = {**run.tags, PID_TAG: str(_dead_pid())}
        instance.add_run_tags(run_id, {PID_TAG: tags[PID_TAG]})
        child = instance.create_run_for_job(
            _job(), run_config=run.run_config, tags=tags, parent_run_id=run_id, root_run_id=run_id,
            status=dg.DagsterRunStatus.STARTED, remote_job_origin=origin)
        assert run_liveness(instance, instance.get_run_by_id(run_id)).alive is False  # the parent's pid is gone
        assert run_liveness(instance, child).alive is True
        instance.report_run_failed(child, "stopped by the test")
        assert settle_outcome(instance, child.run_id) == "failed"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _job():
    from churn_assets.defs.definitions import build_defs

    return build_defs().resolve_job_def("churn_refresh")


def test_a_refused_challenger_names_the_version_that_stays(churn_env, capsys):  # noqa: F811
    home, config = churn_env
    assert run_cli(capsys, "materialize", "--as-of", FIRST_WEEK, *FAST)[0] == 0
    # A gate that demands a large improvement over the champion: the next challenger is refused.
    config.write_text(config.read_text() + '\n[[gate.rules]]\nmetric = "roc_auc"\nfloor = 0.5\n'
                                           'max_regression = -0.2\nmode = "point"\n')
    code, out, err = run_cli(capsys, "materialize", "--as-of", NEXT_WEEK, *FAST)
    assert code == 4, out + err
    reason = err.strip().splitlines()[-1]
    assert re.fullmatch(r"churn-assets materialize: deployment refused: ROC AUC is (only 0\.\d{3} higher than|"
                        r"0\.\d{3} lower than|equal to) the champion's \(95% interval of the difference"
                        r" [+-]0\.\d{3} to [+-]0\.\d{3}\); the rule asks for at least 0\.2 higher;"
                        r" production stays v0001", reason), reason
    run_id = re.search(r"^run (\S+): refused by the gate: production unchanged$", out, flags=re.M).group(1)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_run_by_id(run_id).tags[OUTCOME_TAG] == "refused"

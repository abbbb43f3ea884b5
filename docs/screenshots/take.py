"""Screenshots of the model-health pages in a real headless browser (not part of the tests).

    .venv/bin/python docs/screenshots/take.py [--port 3333] [--keep HOME]

Builds a temporary data directory with three refreshes of the simulator (a bootstrap
deploy, a challenger the gate refuses, a promoted challenger), then rolls production
back to v0001 and refreshes once more (the challenger passes but is held: the pages
show v0001 as champion and its card), starts ``churn-assets dev`` on a loopback port,
and saves PNGs of the asset pages beside this script.
Needs Debian's ``chromium`` (``apt-get install chromium``) and ``pip install playwright``;
no ``playwright install``: the system browser is used.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("churn-assets"))
CHROMIUM = "/usr/bin/chromium"


def refresh(env: dict, as_of: str, config: Path | None = None) -> None:
    run_env = dict(env, **({"CHURN_ASSETS_CONFIG": str(config)} if config else {}))
    done = subprocess.run([CLI, "materialize", "--as-of", as_of], env=run_env, text=True, capture_output=True,
                          check=False)
    print(done.stdout[-1500:], done.stderr[-500:], sep="\n")


def prepare(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CHURN_ASSETS_CONFIG")}
    env.update(CHURN_ASSETS_HOME=str(home), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    strict = home.parent / "strict.toml"
    # A gate that demands a big improvement, so the middle refresh is refused and shows
    # up as a red cross on the trend and in `churn-assets versions`.
    strict.write_text('[[gate.rules]]\nmetric = "roc_auc"\nfloor = 0.7\nmax_regression = -0.2\nmode = "point"\n')
    if not (home / "registry" / "production.json").exists():
        refresh(env, "2026-05-04")
        refresh(env, "2026-05-11", strict)
        refresh(env, "2026-05-18")
        back = subprocess.run([CLI, "rollback", "--to", "v0001"], env=env, text=True, capture_output=True, check=False)
        print(back.stdout[-800:], back.stderr[-500:], sep="\n")
        refresh(env, "2026-05-25")
    return env


def wait_for(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def _open(page, base: str, asset: str) -> None:
    page.goto(f"{base}/assets/{asset}", wait_until="networkidle")
    page.wait_for_timeout(3000)
    skip = page.get_by_role("button", name="Skip")  # the UI's first-visit newsletter dialog
    if skip.count():
        skip.click()


def _markdown_dialog(page, base: str, asset: str, key: str, path: Path) -> None:
    """Open the ``[Show Markdown]`` dialog of metadata entry ``key`` and capture it."""
    _open(page, base, asset)
    page.get_by_placeholder("Filter metadata keys").fill(key)
    page.wait_for_timeout(1000)
    page.get_by_text("[Show Markdown]").first.click()
    page.wait_for_timeout(2500)
    dialog = page.locator("[role=dialog]").first
    # The whole dialog, even where it is taller than the window (the model card is).
    dialog.evaluate("el => el.scrollIntoView({block: 'start'})")
    dialog.screenshot(path=str(path))


def shoot(base: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1150})
        # The summary line, first among the metadata. At 1400 px the comparison table in
        # the same column widens it past the panel and the line is cut; at 1920 it fits.
        page.set_viewport_size({"width": 1920, "height": 1000})
        _open(page, base, "evaluation_report")
        page.get_by_text("Metadata", exact=True).first.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.mouse.wheel(0, -80)
        page.wait_for_timeout(1000)
        saved.append(out / "evaluation_report_summary.png")
        page.screenshot(path=str(saved[-1]), clip={"x": 0, "y": 0, "width": 1920, "height": 620})
        page.set_viewport_size({"width": 1920, "height": 1150})
        page.get_by_placeholder("Filter metadata keys").fill("comparison")
        page.wait_for_timeout(1500)
        saved.append(out / "evaluation_report.png")
        page.screenshot(path=str(saved[-1]))
        page.set_viewport_size({"width": 1400, "height": 1150})
        page.get_by_placeholder("Filter metadata keys").fill("")
        page.get_by_role("button", name="Plots").click()
        page.wait_for_timeout(2500)
        # The charts as the UI orders them (by key): the gate's metrics ("1_roc_auc", ...) first.
        page.get_by_text("1_roc_auc", exact=True).first.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.mouse.wheel(0, -60)
        page.wait_for_timeout(1000)
        saved.append(out / "evaluation_report_metric_charts.png")
        page.screenshot(path=str(saved[-1]))
        page.set_viewport_size({"width": 1400, "height": 1000})
        for key in ("plot_roc_pr", "plot_reliability", "plot_feature_importance", "plot_roc_auc_trend",
                    "plot_confusion_matrix"):
            saved.append(out / f"evaluation_report_{key}.png")
            _markdown_dialog(page, base, "evaluation_report", key, saved[-1])
        # The drift check on clean_features: its table sorted by PSI and the bar chart.
        page.set_viewport_size({"width": 1400, "height": 1600})
        page.goto(f"{base}/assets/clean_features?view=checks&checkDetail=data_drift",
                  wait_until="networkidle")
        page.wait_for_timeout(4000)
        saved.append(out / "clean_features_data_drift.png")
        page.screenshot(path=str(saved[-1]))
        page.set_viewport_size({"width": 1400, "height": 1000})
        saved.append(out / "model_health_realized_trend.png")
        _markdown_dialog(page, base, "model_health", "trend", saved[-1])
        # The registry's history on the deployed_model page: versions, verdicts, the rollback.
        page.set_viewport_size({"width": 1920, "height": 1000})
        saved.append(out / "deployed_model_history.png")
        _markdown_dialog(page, base, "deployed_model", "history", saved[-1])
        # Tall enough for the whole card: the UI paints only what is inside the window.
        page.set_viewport_size({"width": 1400, "height": 4600})
        saved.append(out / "deployed_model_card.png")
        _markdown_dialog(page, base, "deployed_model", "model_card", saved[-1])
        # And its text half alone (up to the plots), readable at README width.
        box = page.locator("[role=dialog]").first.bounding_box()
        plots = page.locator("[role=dialog] h2", has_text="Plots").first.bounding_box()
        saved.append(out / "deployed_model_card_top.png")
        page.screenshot(path=str(saved[-1]), clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                                   "height": plots["y"] - box["y"]})
        browser.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--home", help="reuse this data directory (default: a new temporary one)")
    ns = parser.parse_args()
    home = Path(ns.home) if ns.home else Path(tempfile.mkdtemp(prefix="churn-shots-")) / "home"
    env = prepare(home)
    print(f"data directory: {home}")
    server = subprocess.Popen([CLI, "dev", "--port", str(ns.port)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{ns.port}"
        wait_for(f"{base}/server_info")
        for path in shoot(base, HERE):
            print(f"saved {path}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # only the process group this script started
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

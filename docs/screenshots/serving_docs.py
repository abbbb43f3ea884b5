"""Screenshot of the prediction server's /docs page in headless Chromium (not a test).

    .venv/bin/python docs/screenshots/serving_docs.py

Trains one small logistic-regression model on simulator data into a temporary
registry, promotes it, starts ``churn-assets serve`` on a loopback port, renders
``/docs`` with every request off this machine blocked (as the test does) and saves
``serving_docs.png`` beside this script. Needs Debian's ``chromium`` and playwright
(``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from churn_assets.devtools.sample_models import register, sample_frames, train_family  # noqa: E402
from churn_assets.storage.registry import ModelRegistry  # noqa: E402
from churn_assets_tests.browser_support import render_served_docs  # noqa: E402


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(tempfile.mkdtemp(prefix="churn-docs-shot-"))
    try:
        registry = ModelRegistry(workdir / "registry")
        version = register(registry, train_family(sample_frames(n_customers=600), "logistic_regression"))
        registry.promote(version.version, "screenshot")
        page = render_served_docs(registry.root, workdir, screenshot=HERE / "serving_docs.png")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("operations:", page.operations, "badges:", page.badges, "blocked:", page.blocked)
    return 0 if ("POST", "/predict") in page.operations and "Unable to render" not in page.text else 1


if __name__ == "__main__":
    sys.exit(main())

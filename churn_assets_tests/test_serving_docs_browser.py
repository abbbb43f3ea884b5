"""/docs renders in a real browser, offline, with /predict listed.

FastAPI emits OpenAPI 3.1; the Swagger UI 4.15 once shipped here could not read it and
showed "Unable to render this definition" under an HTTP 200, which a test of the status
alone never saw. Here Debian's Chromium renders the page from a real ``churn-assets
serve`` on loopback, with every request off this machine blocked.
"""

from __future__ import annotations

import pytest

from churn_assets_tests.browser_support import render_served_docs
from churn_assets_tests.serving_support import registry, registry_template, trained  # noqa: F401  (fixtures)


@pytest.fixture
def deployed(registry):
    registry.promote("v0001", "test")
    return registry


def test_docs_render_offline_in_chromium_with_the_predict_operation(deployed, tmp_path):
    page = render_served_docs(deployed.root, tmp_path, screenshot=tmp_path / "docs.png")
    assert "Unable to render" not in page.text, page.text[:500]
    assert ("POST", "/predict") in page.operations, page.operations
    assert {("GET", "/health"), ("GET", "/ready"), ("GET", "/model")} <= set(page.operations), page.operations
    assert "OAS 3.1" in " ".join(page.badges), page.badges  # Swagger UI read the 3.1 document
    assert "v0001" in " ".join(page.badges), page.badges  # the served model's version
    assert not page.blocked, f"the page tried to load from other hosts: {page.blocked}"
    assert not page.console_errors, page.console_errors
    assert (tmp_path / "docs.png").stat().st_size > 10_000

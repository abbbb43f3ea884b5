"""The package's layers import one way only (README: "Layout")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "churn_assets"
WEB_AND_IO = {"dagster", "fastapi", "starlette", "uvicorn", "requests", "sqlalchemy", "urllib3"}

# layer -> (project layers it may import, third-party top-level packages it must not import)
RULES = {
    "core": ({"core"}, WEB_AND_IO | {"matplotlib"}),
    "sources": ({"core", "sources"}, {"dagster", "fastapi", "starlette", "uvicorn"}),
    "storage": ({"core", "storage"}, WEB_AND_IO),
    "health": ({"core", "health"}, WEB_AND_IO),
    "serving": ({"core", "storage", "serving", "settings"}, {"dagster", "requests", "sqlalchemy"}),
    "settings": ({"core", "settings"}, WEB_AND_IO),
    "devtools": ({"core", "sources", "storage", "devtools"}, {"dagster"}),
}
LAYERS = set(RULES) | {"defs", "cli"}
# Within a permitted layer, modules that are still off limits.
FORBIDDEN_MODULES = {"serving": {"churn_assets.core.training"}}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer not in RULES:
            continue
        allowed, banned = RULES[layer]
        for module in sorted(imports_of(path)):
            top, *rest = module.split(".")
            where = f"{path.relative_to(PACKAGE.parent)} imports {module}"
            if top == "churn_assets" and rest:
                if rest[0] in LAYERS and rest[0] not in allowed:
                    problems.append(f"{where} ({layer} may import only {sorted(allowed)})")
                if module in FORBIDDEN_MODULES.get(layer, set()):
                    problems.append(f"{where} (forbidden in {layer})")
            elif top in banned:
                problems.append(f"{where} ({layer} must not import {top})")
    return problems


def test_layers_import_one_way_only():
    assert violations() == []


def test_the_rule_checker_catches_a_violation(tmp_path, monkeypatch):
    # The rules above must be able to fail: plant a core module that imports Dagster.
    fake = tmp_path / "churn_assets"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "leak.py").write_text("import dagster as dg\nfrom churn_assets.defs import data\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations()
    assert any("core/leak.py imports dagster" in v for v in found), found
    assert any("imports churn_assets.defs" in v for v in found), found

"""The code version recorded with a model changes with model code only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import churn_assets
from churn_assets.core.code_version import MODEL_MODULES

PACKAGE = Path(churn_assets.__file__).parent


def code_version_of(package_copy: Path) -> str:
    """``code_version()`` of a copy of the package, computed in a fresh interpreter."""
    probe = "from churn_assets.core.code_version import code_version; print(code_version())"
    done = subprocess.run([sys.executable, "-c", probe], cwd=package_copy.parent, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(package_copy.parent)})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_only_model_code_changes_the_code_version(tmp_path):
    copy = tmp_path / "churn_assets"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    original = code_version_of(copy)
    assert original.startswith(churn_assets.__version__ + "+")

    # Serving, CLI, Dagster and monitoring code do not change what a model learns.
    for path in ("serving/app.py", "cli/__init__.py", "defs/data.py", "settings/model.py"):
        with open(copy / path, "a") as fh:
            fh.write("\n# a comment that changes no model\n")
    assert code_version_of(copy) == original

    with open(copy / "core" / "training.py", "a") as fh:
        fh.write("\n# training code changed\n")
    assert code_version_of(copy) != original


def core_imports(module: str) -> set[str]:
    """The core modules ``module`` (a file name in core/) imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((PACKAGE / "core" / name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("churn_assets.core."):
                todo.append(node.module.rsplit(".", 1)[1] + ".py")
    return seen


def test_every_module_training_and_scoring_run_is_hashed():
    """A module training or the artifact's scoring imports changes what a model learns:
    categories.py (category spellings) and encoding.py (the chunked fit) were missing."""
    used = core_imports("training.py") | core_imports("artifact.py")
    # How frames cross between steps, not what they hold: a change there changes no model.
    transport_only = {"frame_pickle.py"}
    assert used - set(MODEL_MODULES) - transport_only == set()

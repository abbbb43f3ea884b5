"""The code version recorded with every model: package version + hash of the code that
shapes a model.

Only modules that change what a model learns or how it scores are hashed: a comment in
the server, the CLI or a Dagster asset must not make the next run on identical data
retrain and register a new version. The feature spec itself is part of the training
fingerprint (``training.training_fingerprint``), so it is not hashed here.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__version__ = "0.2.0"

# core/ modules that decide what a model learns and how it scores. Adding one here (or
# editing one) changes every fingerprint, so the next run retrains.
MODEL_MODULES = ("spec.py", "labels.py", "validation.py", "categories.py", "features.py", "encoding.py", "windows.py",
                 "training.py", "metrics.py", "calibration.py", "artifact.py")


@lru_cache(maxsize=1)
def code_version(core_dir: Path | None = None) -> str:
    core = core_dir or Path(__file__).parent
    digest = hashlib.sha256()
    for name in MODEL_MODULES:
        path = core / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"

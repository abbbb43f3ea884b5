"""churn_assets: keep a customer-churn model up to date with Dagster assets.

Layers (imports go one way only; ``churn_assets_tests/test_layers.py`` enforces it):

- ``core``: feature spec, validation, preprocessing, training, metrics, gate, artifact.
- ``sources``: where customer records come from (simulator, file, HTTP API, SQL).
- ``storage``: the customer history and the model registry on disk.
- ``health``: drift, plots and model cards.
- ``defs``: the Dagster assets, check, resources, schedules and sensors.
- ``serving``: the prediction server (no Dagster, no training code).
- ``devtools``: the demo customer API and sample models for tests and benchmarks.
"""

from churn_assets.core.code_version import __version__

__all__ = ["definitions", "__version__"]


def __getattr__(name: str):
    # `dagster -m churn_assets` finds the lazy `definitions` here; it is resolved on first
    # access so that processes that only predict (churn-assets serve workers) never import
    # Dagster, and the settings are read when the code location loads, not at import.
    if name == "definitions":
        from churn_assets.defs.definitions import definitions

        return definitions
    raise AttributeError(f"module 'churn_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + ["definitions"])

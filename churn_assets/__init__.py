"""churn_assets: keep a customer-churn model up to date with Dagster assets."""

from churn_assets.version import __version__

__all__ = ["defs", "__version__"]


def __getattr__(name: str):
    # `dagster -m churn_assets` finds `defs` here; it is built on first access so that
    # processes that only predict (churn-assets serve workers) never import Dagster.
    if name == "defs":
        from churn_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'churn_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + ["defs"])

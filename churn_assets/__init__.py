"""churn_assets: keep a customer-churn model up to date with Dagster assets."""

from churn_assets.version import __version__

from churn_assets.definitions import defs  # noqa: E402  (dagster -m churn_assets finds it here)

__all__ = ["defs", "__version__"]

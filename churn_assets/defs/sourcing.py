"""The customer source a ``[source]`` settings section describes.

Kept apart from the Dagster resources (and free of Dagster imports) so that
``churn-assets check-config`` can build the source to sample it without paying for
importing Dagster.
"""

from __future__ import annotations

from churn_assets.settings import SourceSettings
from churn_assets.sources.base import CustomerSource
from churn_assets.sources.file import FileSource
from churn_assets.sources.http import HttpSource
from churn_assets.sources.simulator import SimulatorSource
from churn_assets.sources.sql import SqlSource


def source_from_settings(source: SourceSettings) -> CustomerSource:
    """The plain source object for a validated ``[source]`` section.

    Secrets stay out of it: the HTTP token and a SQL URL from ``url_env`` are read from
    their environment variables when the source connects, once per run.
    """
    options = source.model_dump(exclude={"kind"}, exclude_none=True)
    for key in ("as_of", "start_date", "snapshot_end", "scenario_start"):
        if key in options:
            options[key] = options[key].isoformat()
    if source.kind == "simulator":
        return SimulatorSource(**options)
    if source.kind == "file":
        return FileSource(**options)
    if source.kind == "http":
        return HttpSource(**options)
    if "path" in options:
        options["url"] = f"sqlite:///{options.pop('path')}"
    return SqlSource(**options)

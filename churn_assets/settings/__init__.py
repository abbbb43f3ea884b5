"""Project settings: one typed model of the whole TOML configuration.

Everything has a default that runs the embedded simulator offline. A TOML file named by
``CHURN_ASSETS_CONFIG`` overrides the defaults (see ``examples/telco.toml`` and
docs/configuration.md). Every unknown key, wrong type or impossible value fails here, at
load time, as a ``SettingsError`` naming the file, the dotted key and the reason, with a
"did you mean" for misspelled keys; nothing runs on a configuration that was not read as
written. Two environment variables override single values:

- ``CHURN_ASSETS_HOME``: the data directory (history, registry, Dagster instance);
  default ``~/.churn_assets``.
- ``CHURN_ASSETS_TIMEZONE``: the weekly schedule's timezone (default UTC).

Per-run values (the data's "as of" date, model families, seed) are Dagster run config,
not settings: a long-lived code server must not keep a stale value.

Secrets never go in the TOML file: the HTTP source's token and a SQL URL with a password
are read from the variables that ``source.token_env`` / ``source.url_env`` name, and
failure alerts go to ``CHURN_ASSETS_ALERT_WEBHOOK`` (docs/ingestion.md).
"""

from churn_assets.settings.base import SettingsError, StrictModel
from churn_assets.settings.loading import CONFIG_ENV, describe_errors, load_settings
from churn_assets.settings.model import (DEFAULT_HOME, DagsterSettings, GateRuleSettings, GateSettings,
                                         MonitoringSettings, ScheduleSettings, ScoresSettings, SensorSettings,
                                         Settings, WindowSettings, check_cron)
from churn_assets.settings.sources import (FileSourceSettings, HttpSourceSettings, SimulatorSourceSettings,
                                           SourceSettings, SqlSourceSettings)

__all__ = ["CONFIG_ENV", "DEFAULT_HOME", "DagsterSettings", "FileSourceSettings", "GateRuleSettings",
           "GateSettings", "HttpSourceSettings", "MonitoringSettings", "ScheduleSettings", "ScoresSettings",
           "SensorSettings", "Settings", "SettingsError", "SimulatorSourceSettings", "SourceSettings",
           "SqlSourceSettings", "StrictModel", "WindowSettings", "check_cron", "describe_errors", "load_settings"]

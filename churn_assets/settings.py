"""Project settings: where state lives and how the pipeline is configured.

Everything has a default that runs the embedded simulator offline. A TOML file named
by ``CHURN_ASSETS_CONFIG`` overrides the defaults (see ``examples/telco.toml``); a few
environment variables override single values:

- ``CHURN_ASSETS_HOME``: the data directory (history, registry, Dagster instance);
  default ``~/.churn_assets``.
- ``CHURN_ASSETS_SIMULATOR_AS_OF``: the simulator's "today" (YYYY-MM-DD).
- ``CHURN_ASSETS_TIMEZONE``: the weekly schedule's timezone (default UTC).

Secrets never go in the TOML file: the HTTP source's token and a SQL URL with a
password are read from the variables that ``source.token_env`` / ``source.url_env``
name, and failure alerts go to ``CHURN_ASSETS_ALERT_WEBHOOK`` (docs/ingestion.md).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from churn_assets.gate import DEFAULT_RULES, GateRule

DEFAULT_HOME = "~/.churn_assets"
KNOWN_SECTIONS = {"home", "spec", "source", "window", "gate", "schedule", "sensor"}
SOURCE_KINDS = ("simulator", "file", "http", "sql")


class SettingsError(ValueError):
    """A configuration value that cannot be used, named with its file and key."""


@dataclass
class Settings:
    home: Path
    spec: str = "simulator"
    source: dict = field(default_factory=lambda: {"kind": "simulator"})
    window: dict = field(default_factory=dict)
    gate_rules: tuple[GateRule, ...] = DEFAULT_RULES
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    sensor: dict = field(default_factory=dict)  # new-data sensor: min_new_records, interval

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def load_settings(environ: dict | None = None) -> Settings:
    env = os.environ if environ is None else environ
    config_path = env.get("CHURN_ASSETS_CONFIG", "")
    data: dict = {}
    base = Path.cwd()
    if config_path:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise SettingsError(f"CHURN_ASSETS_CONFIG={config_path!r}: no such file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - KNOWN_SECTIONS)
        if unknown:
            raise SettingsError(f"{path}: unknown keys {unknown}; known: {sorted(KNOWN_SECTIONS)}")
        base = path.resolve().parent
    home = env.get("CHURN_ASSETS_HOME") or data.get("home") or DEFAULT_HOME
    settings = Settings(home=_resolve(home, base))
    settings.spec = str(data.get("spec", settings.spec))
    if settings.spec.endswith(".json"):
        settings.spec = str(_resolve(settings.spec, base))
    source = dict(data.get("source", settings.source))
    _check_source(source, base)
    if env.get("CHURN_ASSETS_SIMULATOR_AS_OF") and source.get("kind") == "simulator":
        source["as_of"] = env["CHURN_ASSETS_SIMULATOR_AS_OF"]
    settings.source = source
    settings.window = dict(data.get("window", {}))
    gate = data.get("gate", {})
    if "rules" in gate:
        try:
            settings.gate_rules = tuple(GateRule(**rule) for rule in gate["rules"])
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"gate.rules: {exc}") from exc
    schedule = data.get("schedule", {})
    settings.cron = schedule.get("cron", settings.cron)
    settings.timezone = env.get("CHURN_ASSETS_TIMEZONE") or schedule.get("timezone", settings.timezone)
    settings.sensor = dict(data.get("sensor", {}))
    return settings


def _check_source(source: dict, base: Path) -> None:
    """Required keys per source kind; relative paths resolve against the config file."""
    kind = source.get("kind")
    if kind not in SOURCE_KINDS:
        raise SettingsError(f"source.kind must be one of {list(SOURCE_KINDS)}, not {kind!r}")
    if kind == "file":
        if "path" not in source:
            raise SettingsError("source.kind = 'file' needs source.path")
        source["path"] = str(_resolve(source["path"], base))
    if kind == "http" and "base_url" not in source:
        raise SettingsError("source.kind = 'http' needs source.base_url (token: source.token_env)")
    if kind == "sql":
        if sum(k in source for k in ("url", "url_env", "path")) != 1:
            raise SettingsError("source.kind = 'sql' needs exactly one of source.url,"
                                " source.url_env (a variable holding the URL) or source.path (SQLite)")
        if ("table" in source) == ("query" in source):
            raise SettingsError("source.kind = 'sql' needs exactly one of source.table or source.query")
        if "path" in source:
            source["url"] = f"sqlite:///{_resolve(source.pop('path'), base)}"


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()

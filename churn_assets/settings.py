"""Project settings: where state lives and how the pipeline is configured.

Everything has a default that runs the embedded simulator offline. A TOML file named
by ``CHURN_ASSETS_CONFIG`` overrides the defaults (see ``examples/telco.toml``); a few
environment variables override single values:

- ``CHURN_ASSETS_HOME``: the data directory (history, registry, Dagster instance);
  default ``~/.churn_assets``.
- ``CHURN_ASSETS_SIMULATOR_AS_OF``: the simulator's "today" (YYYY-MM-DD).
- ``CHURN_ASSETS_TIMEZONE``: the weekly schedule's timezone (default UTC).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from churn_assets.gate import DEFAULT_RULES, GateRule

DEFAULT_HOME = "~/.churn_assets"
KNOWN_SECTIONS = {"home", "spec", "source", "window", "gate", "schedule"}


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
    if source.get("kind") not in ("simulator", "file"):
        raise SettingsError(f"source.kind must be 'simulator' or 'file', not {source.get('kind')!r}")
    if source.get("kind") == "file":
        if "path" not in source:
            raise SettingsError("source.kind = 'file' needs source.path")
        source["path"] = str(_resolve(source["path"], base))
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
    return settings


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()

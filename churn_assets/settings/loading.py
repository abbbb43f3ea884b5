"""Settings from the TOML file that ``CHURN_ASSETS_CONFIG`` names and the environment:
paths resolved against the file, every problem reported as ``file: dotted.key: reason``."""

from __future__ import annotations

import difflib
import glob
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from churn_assets.core.metrics import METRIC_NAMES
from churn_assets.settings.base import SettingsError
from churn_assets.settings.model import Settings
from churn_assets.settings.sources import (FileSourceSettings, HttpSourceSettings, SimulatorSourceSettings,
                                           SqlSourceSettings)

CONFIG_ENV = "CHURN_ASSETS_CONFIG"


def load_settings(environ: dict | None = None) -> Settings:
    """Settings from ``$CHURN_ASSETS_CONFIG`` (if set) and the environment overrides."""
    env = os.environ if environ is None else environ
    config_path = env.get(CONFIG_ENV, "")
    data: dict[str, Any] = {}
    where = "default settings"
    base = Path.cwd()
    if config_path:
        path = Path(config_path).expanduser()
        where = str(path)
        if not path.is_file():
            raise SettingsError(f"{CONFIG_ENV}={config_path!r}: no such file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        base = path.resolve().parent
    data = _resolve_paths(data, base)
    if env.get("CHURN_ASSETS_HOME"):
        data["home"] = env["CHURN_ASSETS_HOME"]
    if env.get("CHURN_ASSETS_TIMEZONE"):
        data.setdefault("schedule", {})
        if isinstance(data["schedule"], dict):
            data["schedule"]["timezone"] = env["CHURN_ASSETS_TIMEZONE"]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, where)) from None
    if settings.source.kind == "file":
        _check_file_glob(settings.source, where)
    return settings


def _resolve_paths(data: dict, base: Path) -> dict:
    """Relative paths in the file are relative to the file, not to the working directory."""
    data = dict(data)
    if isinstance(data.get("home"), str) and "://" not in data["home"]:  # a URL is not relative
        data["home"] = str(_resolve(data["home"], base))
    if isinstance(data.get("spec"), str) and data["spec"].endswith(".json"):
        data["spec"] = str(_resolve(data["spec"], base))
    source = data.get("source")
    if isinstance(source, dict):
        source = dict(source)
        for key in ("path",):
            if isinstance(source.get(key), str):
                source[key] = str(_resolve(source[key], base))
        data["source"] = source
    return data


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _check_file_glob(source: FileSourceSettings, where: str) -> None:
    pattern = source.path
    matches = glob.glob(pattern) if any(ch in pattern for ch in "*?[") else [pattern]
    if not any(Path(m).is_file() for m in matches):
        raise SettingsError(f"{where}: source.path: no file matches {pattern!r}")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The settings model that owns the key at ``loc`` (for "did you mean")."""
    model: Any = Settings
    sources = {"simulator": SimulatorSourceSettings, "file": FileSourceSettings,
               "http": HttpSourceSettings, "sql": SqlSourceSettings}
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        if part in sources and model is Settings.model_fields["source"]:
            model = sources[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return model
        annotation = field.annotation
        if part == "source":
            model = Settings.model_fields["source"]
            continue
        inner = getattr(annotation, "__args__", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            model = inner[0]
        else:
            model = None
    return model if isinstance(model, type) else None


def describe_errors(exc: ValidationError, where: str) -> str:
    """One line per problem: ``file: dotted.key: reason``, with "did you mean" for typos."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # The discriminated union adds the source kind to the path; users never wrote it.
        shown = [str(p) for p in loc if not (len(loc) > 1 and loc[0] == "source" and p == loc[1]
                                           and p in ("simulator", "file", "http", "sql"))]
        key = ".".join(shown) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            known = sorted(getattr(owner, "model_fields", {})) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = "unknown key" + (f"; did you mean {close[0]!r}?" if close else "") + (
                f" (known: {', '.join(known)})" if known else "")
        elif error["type"] == "union_tag_invalid":
            given = error["input"].get("kind") if isinstance(error["input"], dict) else error["input"]
            message = (f"unknown source kind {given!r}; choose one of"
                       " 'simulator', 'file', 'http', 'sql'")
        elif error["type"] == "literal_error" and shown[-1:] == ["metric"]:
            close = difflib.get_close_matches(str(error["input"]), METRIC_NAMES, n=1)
            message = (f"unknown metric {error['input']!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                       + f" (known: {', '.join(METRIC_NAMES)})")
        else:
            message = message.removeprefix("Value error, ")
            if "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], dict):
                message += f" (got {error['input']!r})"
        lines.append(f"{where}: {key}: {message}")
    return "\n".join(lines)

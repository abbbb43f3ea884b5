"""Settings from the TOML file that ``CHURN_ASSETS_CONFIG`` names and the environment:
paths resolved against the file, every problem reported as ``file: dotted.key: reason``."""

from __future__ import annotations

import difflib
import glob
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from churn_assets.core.metrics import METRIC_NAMES
from churn_assets.core.redaction import redact
from churn_assets.core.spec import SpecFile
from churn_assets.settings.base import SettingsError
from churn_assets.settings.model import (DagsterSettings, GateRuleSettings, GateSettings, MonitoringSettings,
                                         ScheduleSettings, ScoresSettings, SensorSettings, Settings,
                                         WindowSettings)
from churn_assets.settings.sources import (FileSourceSettings, HttpSourceSettings, SimulatorSourceSettings,
                                           SqlSourceSettings)

CONFIG_ENV = "CHURN_ASSETS_CONFIG"
_SOURCE_KINDS = {"simulator": SimulatorSourceSettings, "file": FileSourceSettings,
                 "http": HttpSourceSettings, "sql": SqlSourceSettings}


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
        data = _read_toml(path)
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


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML document; a file that is not UTF-8 text or not TOML is a
    ``SettingsError`` naming the file (and, for TOML, the line)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset"
                            f" {exc.start}); TOML files must be saved as UTF-8") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}{_date_hint(text, str(exc))}") from None


# A value that was meant as a date: digits separated by - / or . (2026-5-4, 2026/05/04).
_DATE_LIKE = re.compile(r"^\s*([\w.\-\"']+)\s*=\s*(\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\S*)")


def _date_hint(text: str, message: str) -> str:
    """What to write instead, when the line TOML stopped at holds a malformed date: the
    parser only reports a position, which does not say the date was the problem."""
    where = re.search(r"\(at line (\d+), column \d+\)", message)
    lines = text.splitlines()
    if where is None or not 0 < int(where.group(1)) <= len(lines):
        return ""
    match = _DATE_LIKE.match(lines[int(where.group(1)) - 1])
    if match is None:
        return ""
    return (f"; {match.group(1)} = {match.group(2)} is not a valid date: write a real date as"
            " YYYY-MM-DD, e.g. 2026-05-04")


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
    sources = _SOURCE_KINDS
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


# Where each key belongs, for "it belongs under ..." when it is written in the wrong place.
_SECTIONS = ((Settings, "the top level"), (WindowSettings, "[window]"), (GateSettings, "[gate]"),
             (GateRuleSettings, "[[gate.rules]]"), (ScheduleSettings, "[schedule]"),
             (SensorSettings, "[sensor]"), (ScoresSettings, "[scores]"), (DagsterSettings, "[dagster]"),
             (MonitoringSettings, "[monitoring]"),
             *((model, f"[source] with kind = {kind!r}") for kind, model in _SOURCE_KINDS.items()))


def _belongs_elsewhere(key: str, owner: type[BaseModel] | None) -> str | None:
    """Where ``key`` is a valid key, if not in ``owner`` (its section here), else None."""
    homes = [label for model, label in _SECTIONS
             if model is not owner and key in model.model_fields and key != "kind"]
    if homes:
        return "it belongs under " + " or ".join(homes) if homes != ["the top level"] else \
            "it belongs at the top level"
    if key in SpecFile.model_fields:
        return ("it belongs in the feature spec (the JSON file that `spec` names;"
                " docs/configuration.md, \"Feature spec\"), not in this file")
    return None


def _unknown_key_message(loc: tuple) -> str:
    owner = _model_at(loc[:-1])
    known = sorted(getattr(owner, "model_fields", {})) if owner else []
    elsewhere = _belongs_elsewhere(str(loc[-1]), owner)
    if elsewhere:
        return f"unknown key here; {elsewhere}"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "") + (
        f" (known: {', '.join(known)})" if known else "")


def describe_errors(exc: ValidationError, where: str) -> str:
    """One line per problem: ``file: dotted.key: reason``, with "did you mean" for typos
    and "it belongs under" for keys written in the wrong section. Credentials in a value
    are masked: a refused URL is quoted back, and a refused URL may hold a password."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # The discriminated union adds the source kind to the path; users never wrote it.
        shown = [str(p) for p in loc if not (len(loc) > 1 and loc[0] == "source" and p == loc[1]
                                           and p in _SOURCE_KINDS)]
        key = ".".join(shown) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = _unknown_key_message(loc)
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
                if isinstance(error["input"], str) and error["type"] in ("bool_type", "int_type", "float_type"):
                    message += "; write it without quotes"
        lines.append(redact(f"{where}: {key}: {message}"))
    return "\n".join(lines)

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

from __future__ import annotations

import datetime as dt
import difflib
import glob
import math
import os
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from churn_assets.core.gate import DEFAULT_RULES, GateRule
from churn_assets.core.home_url import check_home_url, url_scheme
from churn_assets.core.metrics import METRIC_NAMES
from churn_assets.core.spec import FeatureSpec, SpecError, load_spec

DEFAULT_HOME = "~/.churn_assets"
CONFIG_ENV = "CHURN_ASSETS_CONFIG"


class SettingsError(ValueError):
    """A configuration value that cannot be used, named with its file and key."""


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelled key silently falling back to a default is
    # the worst kind of configuration bug.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number (NaN or infinity would disable the rule)")
    return value


class SimulatorSourceSettings(_Strict):
    """The built-in simulated customer base (offline, deterministic)."""

    kind: Literal["simulator"] = "simulator"
    n_customers: int = Field(3000, ge=10, le=50_000_000)
    start_date: dt.date = dt.date(2026, 1, 5)
    seed: int = 7
    # Default "today" of the data; a run's `as_of` run config overrides it.
    as_of: dt.date | None = None


class FileSourceSettings(_Strict):
    """A CSV or Parquet export: a path or a glob, relative to the configuration file."""

    kind: Literal["file"]
    path: str
    snapshot_weeks: int = Field(0, ge=0, le=520)
    snapshot_end: dt.date = dt.date(2026, 1, 5)
    # The data's "today": labels of snapshots within the label horizon before it are
    # provisional. Empty: the latest snapshot in the export.
    as_of: dt.date | None = None


class HttpSourceSettings(_Strict):
    """A REST API (docs/ingestion.md); the token comes from the variable ``token_env``."""

    kind: Literal["http"]
    base_url: str
    token_env: str = "CHURN_ASSETS_API_TOKEN"
    page_size: int = Field(5000, ge=1, le=100_000)
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    read_retries: int = Field(1, ge=0, le=20)
    backoff_factor: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    max_retry_after: int = Field(300, ge=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
        if re.match(r"^https?://[^/@\s]*:[^/@\s]*@", value):
            raise ValueError("must not carry a password; put the token in the variable"
                             " that source.token_env names")
        return value.rstrip("/")


class SqlSourceSettings(_Strict):
    """A table or query in a SQL database (SQLAlchemy URL); one of url, url_env, path."""

    kind: Literal["sql"]
    url: str | None = None
    url_env: str | None = None
    path: str | None = None  # SQLite file, relative to the configuration file
    table: str | None = None
    query: str | None = None
    updated_at_column: str = ""
    chunk_size: int = Field(50_000, ge=1)
    as_of: dt.date | None = None

    @model_validator(mode="after")
    def _one_of_each(self):
        if sum(v is not None for v in (self.url, self.url_env, self.path)) != 1:
            raise ValueError("needs exactly one of url, url_env (a variable holding the URL)"
                             " or path (a SQLite file)")
        if (self.table is None) == (self.query is None):
            raise ValueError("needs exactly one of table or query")
        return self


SourceSettings = Annotated[
    Union[SimulatorSourceSettings, FileSourceSettings, HttpSourceSettings, SqlSourceSettings],
    Field(discriminator="kind"),
]


class WindowSettings(_Strict):
    """How the history is cut into weeks: train + validation = the training window."""

    training_window_weeks: int = Field(12, ge=2, le=520)
    validation_weeks: int = Field(2, ge=1, le=52)
    holdout_weeks: int = Field(2, ge=1, le=52)

    @model_validator(mode="after")
    def _validation_inside_window(self):
        if self.training_window_weeks <= self.validation_weeks:
            raise ValueError(f"training_window_weeks ({self.training_window_weeks}) must exceed"
                             f" validation_weeks ({self.validation_weeks})")
        return self


class GateRuleSettings(_Strict):
    metric: Literal[METRIC_NAMES]  # type: ignore[valid-type]
    floor: float | None = None
    max_regression: float | None = None
    # "point": the measured drop must be <= max_regression; "noninferiority": refuse only
    # when the paired comparison shows, at `confidence`, a drop beyond it (core.gate).
    mode: Literal["point", "noninferiority"] = "point"
    confidence: float = 0.95

    @field_validator("floor", "max_regression")
    @classmethod
    def _finite_bounds(cls, value: float | None) -> float | None:
        return _finite(value)

    @field_validator("confidence")
    @classmethod
    def _confidence_level(cls, value: float) -> float:
        _finite(value)
        if not 0.5 < value < 1:
            raise ValueError("must be strictly between 0.5 and 1 (a one-sided confidence level, e.g. 0.95)")
        return value

    @model_validator(mode="after")
    def _something_to_check(self):
        if self.floor is None and self.max_regression is None:
            raise ValueError(f"the {self.metric} rule sets neither floor nor max_regression")
        if self.mode == "noninferiority" and self.max_regression is not None and self.max_regression < 0:
            raise ValueError(f"the {self.metric} noninferiority rule needs max_regression >= 0")
        return self

    def rule(self) -> GateRule:
        return GateRule(self.metric, self.floor, self.max_regression, self.mode, self.confidence)

    @classmethod
    def from_rule(cls, rule: GateRule) -> GateRuleSettings:
        return cls(metric=rule.metric, floor=rule.floor, max_regression=rule.max_regression,
                   mode=rule.mode, confidence=rule.confidence)


def _default_rules() -> list[GateRuleSettings]:
    return [GateRuleSettings.from_rule(r) for r in DEFAULT_RULES]


class GateSettings(_Strict):
    rules: list[GateRuleSettings] = Field(default_factory=_default_rules, min_length=1)


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?|[a-z]{3}(-[a-z]{3})?)(/\d+)?(,(\*|\d+(-\d+)?|[a-z]{3}(-[a-z]{3})?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def check_cron(expression: str) -> str:
    """A five-field cron expression (minute hour day month weekday), or ValueError."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} is not a cron expression: it needs 5 fields"
                         f" (minute hour day month weekday), not {len(fields)}")
    for field, (low, high), name in zip(fields, _CRON_RANGES, ("minute", "hour", "day", "month", "weekday")):
        if not _CRON_FIELD.match(field.lower()):
            raise ValueError(f"{expression!r}: the {name} field {field!r} is not valid cron")
        for number in re.findall(r"(?<![/\d])\d+", field):
            if not low <= int(number) <= high:
                raise ValueError(f"{expression!r}: {name} {number} is outside {low}-{high}")
    return expression


class ScheduleSettings(_Strict):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as"
                             " 'Europe/Berlin' or 'UTC')") from None
        return value


class SensorSettings(_Strict):
    # None: on for the HTTP and SQL sources, off for the simulator and files.
    enabled: bool | None = None
    min_new_records: int = Field(1000, ge=1)
    interval_seconds: int = Field(300, ge=30)


class DagsterSettings(_Strict):
    """Where Dagster keeps its runs and how it executes steps (docs/deploy.md)."""

    # in_process: one process, milliseconds per step (the default: the graph is a chain).
    # multiprocess: a process per step. celery: steps go to Celery workers via a broker.
    executor: Literal["in_process", "multiprocess", "celery"] = "in_process"
    # Variables holding URLs (they may carry passwords, so never the URLs themselves).
    postgres_url_env: str = ""
    celery_broker_env: str = "CHURN_ASSETS_CELERY_BROKER"
    celery_backend_env: str = ""
    # The Celery queue this deployment's steps are sent to; its workers listen on it
    # (`dagster-celery worker start -q <queue>`). Two deployments (or test runs) sharing a
    # broker need two queues, or each one's workers take the other's steps.
    celery_queue: str = Field("dagster", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    # Where this machine keeps the Dagster instance, run logs and the refresh lock when
    # `home` is on object storage (they are per-machine state, not shared data); default
    # ~/.churn_assets/<bucket>_<prefix>. A local `home` keeps them inside it, as before.
    local_dir: str = ""

    @model_validator(mode="after")
    def _celery_needs_a_broker(self):
        if self.executor == "celery" and not self.celery_broker_env:
            raise ValueError("executor = 'celery' needs celery_broker_env (a variable holding"
                             " the broker URL, e.g. redis://127.0.0.1:6379/0)")
        return self


class ScoresSettings(_Strict):
    """The weekly churn-risk list (`churn_scores`): who is scored and where it goes."""

    # Customers whose newest snapshot is this close to the newest snapshot of all: the
    # active base. Customers last seen long ago have already left; scoring them is noise.
    active_within_days: int = Field(14, ge=1, le=3650)
    chunk_rows: int = Field(250_000, ge=1_000)
    # Variable holding a SQLAlchemy URL; set it to upsert the list into `sql_table` too.
    sql_url_env: str = ""
    sql_table: str = Field("churn_scores", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class MonitoringSettings(_Strict):
    """Production-model health: drift (PSI) thresholds, allowed AUC decay, the sensor."""

    psi_watch: float = Field(0.1, ge=0, allow_inf_nan=False)
    psi_act: float = Field(0.25, ge=0, allow_inf_nan=False)
    # Realized ROC AUC this far below the deploy-time AUC is decay (alert + refresh).
    max_auc_decay: float = Field(0.03, ge=0, le=1)
    decay_weeks: int = Field(4, ge=1, le=52)  # newest matured weeks the decay is judged on
    current_weeks: int = Field(1, ge=1, le=52)
    reference_sample_rows: int = Field(50_000, ge=1000)
    score_sample_rows: int = Field(10_000, ge=1000)  # rows scored per side for prediction drift
    rows_per_week: int = Field(20_000, ge=1000)  # rows scored per week: realized and estimated
    estimate_draws: int = Field(200, ge=20, le=10_000)
    sensor_enabled: bool = True
    sensor_interval_seconds: int = Field(300, ge=30)
    retrain_on_drift: bool = True
    retrain_on_decay: bool = True

    @model_validator(mode="after")
    def _watch_below_act(self):
        if self.psi_watch > self.psi_act:
            raise ValueError(f"psi_watch ({self.psi_watch}) must not exceed psi_act ({self.psi_act})")
        return self


class Settings(_Strict):
    """The whole configuration; ``load_settings`` builds it from the TOML file."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    home: Path = Path(DEFAULT_HOME).expanduser()
    spec: str = "simulator"
    source: SourceSettings = Field(default_factory=SimulatorSourceSettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    sensor: SensorSettings = Field(default_factory=SensorSettings)
    scores: ScoresSettings = Field(default_factory=ScoresSettings)
    dagster: DagsterSettings = Field(default_factory=DagsterSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @field_validator("home", mode="plain")
    @classmethod
    def _local_path_or_s3_url(cls, value):
        # A local folder stays a Path; "s3://bucket/prefix" becomes a UPath (storage/location.py
        # adds the endpoint from AWS_ENDPOINT_URL). Any other scheme is refused here, at load
        # time, rather than silently becoming a local folder named "gs:".
        if not isinstance(value, (str, os.PathLike)) and not hasattr(value, "protocol"):
            raise ValueError(f"must be a local path or an s3:// URL, not {type(value).__name__}")
        text = value if isinstance(value, str) else str(value)
        if url_scheme(text) is None:
            return Path(text).expanduser()
        check_home_url(text)
        from upath import UPath

        return UPath(text.rstrip("/"))

    @field_validator("spec")
    @classmethod
    def _loadable_spec(cls, value: str) -> str:
        try:
            load_spec(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def local_home(self) -> Path:
        """This machine's folder for the instance, logs and the refresh lock: ``home``
        itself when it is local, else ``[dagster] local_dir`` or one derived from the URL."""
        if "://" not in str(self.home):
            return Path(self.home)
        if self.dagster.local_dir:
            return Path(self.dagster.local_dir).expanduser()
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", str(self.home).split("://", 1)[1]).strip("_")
        return Path("~/.churn_assets").expanduser() / slug

    @property
    def dagster_home(self) -> Path:
        return self.local_home / "dagster"

    @property
    def gate_rules(self) -> tuple[GateRule, ...]:
        return tuple(r.rule() for r in self.gate.rules)

    def feature_spec(self) -> FeatureSpec:
        return load_spec(self.spec)

    def with_rules(self, rules) -> Settings:
        """A copy with other gate rules (``GateRule`` objects)."""
        return self.model_copy(update={"gate": GateSettings(rules=[
            GateRuleSettings.from_rule(r) for r in rules])})


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

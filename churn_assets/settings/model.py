"""The settings model: every section of the TOML file as a strict pydantic model, and
``Settings``, the whole of it. ``loading.py`` builds it from the file and the environment."""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from churn_assets.core.gate import DEFAULT_RULES, GateRule, default_mode
from churn_assets.core.home_url import check_home_url, url_scheme
from churn_assets.core.metrics import METRIC_NAMES
from churn_assets.core.spec import FeatureSpec, SpecError, load_spec
from churn_assets.settings.base import StrictModel
from churn_assets.settings.sources import SimulatorSourceSettings, SourceSettings

DEFAULT_HOME = "~/.churn_assets"


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number (NaN or infinity would disable the rule)")
    return value


class WindowSettings(StrictModel):
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


class GateRuleSettings(StrictModel):
    metric: Literal[METRIC_NAMES]  # type: ignore[valid-type]
    floor: float | None = None
    max_regression: float | None = None
    # "point": the measured drop must be <= max_regression; "noninferiority": refuse only
    # when the paired comparison shows, at `confidence`, a drop beyond it (core.gate).
    # Unset: what the built-in rules use for that metric (core.gate.default_mode), so a
    # rule restated without its mode keeps its meaning.
    mode: Literal["point", "noninferiority"] | None = None
    confidence: float = 0.95
    # "champion", or "best_recent": the best of the newest registered versions on this holdout.
    against: Literal["champion", "best_recent"] = "champion"

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
        mode = self.mode or default_mode(self.metric)
        if mode == "noninferiority" and self.max_regression is not None and self.max_regression < 0:
            raise ValueError(f"the {self.metric} noninferiority rule needs max_regression >= 0")
        if self.against == "best_recent" and (self.max_regression is None or self.floor is not None):
            raise ValueError(f"the {self.metric} rule against best_recent needs max_regression and no floor")
        return self

    def rule(self) -> GateRule:
        return GateRule(self.metric, self.floor, self.max_regression, self.mode, self.confidence, self.against)

    @classmethod
    def from_rule(cls, rule: GateRule) -> GateRuleSettings:
        return cls(metric=rule.metric, floor=rule.floor, max_regression=rule.max_regression,
                   mode=rule.mode, confidence=rule.confidence, against=rule.against)


def _default_rules() -> list[GateRuleSettings]:
    return [GateRuleSettings.from_rule(r) for r in DEFAULT_RULES]


class GateSettings(StrictModel):
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


class ScheduleSettings(StrictModel):
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


class SensorSettings(StrictModel):
    # None: on for the HTTP and SQL sources, off for the simulator and files.
    enabled: bool | None = None
    min_new_records: int = Field(1000, ge=1)
    interval_seconds: int = Field(300, ge=30)


class DagsterSettings(StrictModel):
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


class ScoresSettings(StrictModel):
    """The weekly churn-risk list (`churn_scores`): who is scored and where it goes."""

    # Customers whose newest snapshot is this close to the newest snapshot of all: the
    # active base. Customers last seen long ago have already left; scoring them is noise.
    active_within_days: int = Field(14, ge=1, le=3650)
    chunk_rows: int = Field(250_000, ge=1_000)
    # Variable holding a SQLAlchemy URL; set it to upsert the list into `sql_table` too.
    sql_url_env: str = ""
    sql_table: str = Field("churn_scores", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class MonitoringSettings(StrictModel):
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


# What the model card says the model is for, per built-in spec; a custom spec gets the
# neutral text. The last two sentences hold for any churn model trained here.
_LIMITS = ("Scores are probabilities of churning within the label horizon, ranked per week. Not for"
           " decisions about individual customers (pricing, contract terms, account closure) without"
           " human review, and not valid for customers or markets outside the training population or"
           " after a large feature drift.")
INTENDED_USE = {
    "simulator": ("Weekly churn-risk scoring of active customers of an e-commerce SaaS, to prioritise"
                  " retention outreach (e.g. customer-success calls, offers) across the customer base. "
                  + _LIMITS),
    "telco": ("Weekly churn-risk scoring of a telecom operator's subscribers (contract, services and"
              " billing), to prioritise retention outreach (e.g. contract offers, service calls)"
              " across the subscriber base. " + _LIMITS),
}
NEUTRAL_INTENDED_USE = ("Weekly churn-risk scoring of the active customers this feature spec ({spec})"
                        " describes, to prioritise retention outreach across the customer base. " + _LIMITS)


class ModelCardSettings(StrictModel):
    """What the model card says about the model's use (`[model_card]`)."""

    # Empty: the default for the feature spec (INTENDED_USE, else NEUTRAL_INTENDED_USE).
    intended_use: str = Field("", max_length=4000)


class Settings(StrictModel):
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
    model_card: ModelCardSettings = Field(default_factory=ModelCardSettings)
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

    def intended_use(self) -> str:
        """The model card's "Intended use": ``[model_card] intended_use``, else the spec's default."""
        if self.model_card.intended_use.strip():
            return self.model_card.intended_use.strip()
        return INTENDED_USE.get(self.spec, NEUTRAL_INTENDED_USE.format(spec=self.feature_spec().name))

    def named_variables(self) -> list[tuple[str, str, str]]:
        """(dotted key, variable, what it must hold) of every environment variable a run
        of these settings reads: the secrets the file names instead of holding them."""
        named = []
        if self.source.kind == "http":
            named.append(("source.token_env", self.source.token_env, "the customer API's bearer token"))
        if self.source.kind == "sql" and self.source.url_env:
            named.append(("source.url_env", self.source.url_env, "the source database's URL"))
        if self.scores.sql_url_env:
            named.append(("scores.sql_url_env", self.scores.sql_url_env,
                          "the URL of the database the risk list is written to"))
        if self.dagster.postgres_url_env:
            named.append(("dagster.postgres_url_env", self.dagster.postgres_url_env,
                          "the PostgreSQL URL of the Dagster instance"))
        if self.dagster.executor == "celery":
            named.append(("dagster.celery_broker_env", self.dagster.celery_broker_env, "the Celery broker's URL"))
            if self.dagster.celery_backend_env:
                named.append(("dagster.celery_backend_env", self.dagster.celery_backend_env,
                              "the Celery results backend's URL"))
        return named

    def unset_variables(self, environ=None) -> list[str]:
        """One line per variable of ``named_variables`` that is unset or empty in
        ``environ`` (default ``os.environ``): a run would fail on each, some only after
        the model was deployed, so commands check them before doing any work."""
        env = os.environ if environ is None else environ
        return [f"{key}: the environment variable {variable} is not set; it must hold {what}"
                for key, variable, what in self.named_variables() if not env.get(variable)]

    def with_rules(self, rules) -> Settings:
        """A copy with other gate rules (``GateRule`` objects)."""
        return self.model_copy(update={"gate": GateSettings(rules=[
            GateRuleSettings.from_rule(r) for r in rules])})

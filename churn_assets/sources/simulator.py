"""The built-in simulated e-commerce SaaS customer base as a source (offline, deterministic)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from churn_assets.core.spec import FeatureSpec
from churn_assets.sources.base import CustomerSource, SourceBatch
from churn_assets.sources.simulation import SimulatorSettings, simulate


class SimulatorSource(CustomerSource):
    """The built-in simulated e-commerce SaaS customer base (offline, deterministic).

    ``as_of`` ("YYYY-MM-DD") fixes the simulated "today"; empty means the real date, so
    a weekly schedule sees one new snapshot week each Monday.
    """

    n_customers: int = 3000
    start_date: str = "2026-01-05"
    seed: int = 7
    as_of: str = ""
    scenario: str = "stable"
    scenario_start: str = "2026-07-06"

    def settings(self, spec: FeatureSpec) -> SimulatorSettings:
        return SimulatorSettings(n_customers=self.n_customers, start_date=self.start_date,
                                 seed=self.seed, horizon_days=spec.label_horizon_days or 28,
                                 scenario=self.scenario, scenario_start=self.scenario_start)

    def current_date(self, as_of: pd.Timestamp | None = None) -> pd.Timestamp:
        """The simulated "today": the run's ``as_of``, else this source's, else the real date."""
        if as_of is not None:
            return pd.Timestamp(as_of).normalize()
        if self.as_of:
            return pd.Timestamp(self.as_of).normalize()
        return pd.Timestamp(dt.datetime.now(dt.timezone.utc).date())

    def fetch(self, spec: FeatureSpec, watermark: str | None,
              as_of: pd.Timestamp | None = None) -> SourceBatch:
        as_of = self.current_date(as_of)
        records = simulate(self.settings(spec), as_of)
        if watermark:
            records = records[records["updated_at"] > pd.Timestamp(watermark)]
        records = records.reset_index(drop=True)
        newest = records["updated_at"].max() if len(records) else None
        new_mark = str(newest) if newest is not None else watermark
        return SourceBatch(records, new_mark, as_of,
                           f"simulator: {self.n_customers} customers, as of {as_of.date()}")

    def sample(self, spec: FeatureSpec, rows: int = 5) -> pd.DataFrame:
        # The first simulated week of a small base: the columns do not depend on its size.
        small = SimulatorSettings(n_customers=max(rows, 10), start_date=self.start_date, seed=self.seed,
                                  horizon_days=spec.label_horizon_days or 28)
        return simulate(small, pd.Timestamp(self.start_date)).head(rows)

    def describe(self) -> str:
        scenario = "" if self.scenario == "stable" else f", scenario={self.scenario} from {self.scenario_start}"
        return (f"simulator (n_customers={self.n_customers}, seed={self.seed}, as_of={self.as_of or 'today'}"
                f"{scenario})")

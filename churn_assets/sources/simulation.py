"""A deterministic simulator of an e-commerce SaaS customer base.

Each Monday every active customer gets a snapshot row: demographics, plan, usage,
ordering behaviour, support contacts and spend. Churn follows a weekly hazard driven
by those signals (low engagement, support trouble, basic plan, cash payments, long
gaps between orders), the base drifts slowly (engagement sags over the year), and
some values are missing or written inconsistently ("CC" vs "Credit Card"), as in
real exports.

Labels are what a real source can know on ``as_of``: a snapshot's label means
"churned within ``horizon_days`` after the snapshot", so for the newest snapshots it
is provisional (only churn seen so far) and flips to 1 later, when that record's
``updated_at`` moves. Week ``w`` draws from its own seeded generator, so the rows of
a week never depend on how far the simulation was run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_START = "2026-01-05"  # a Monday
PLANS = np.array(["basic", "pro", "enterprise"])
PLAN_PRICE = np.array([29.0, 99.0, 399.0])
COUNTRIES = np.array(["us", "uk", "de", "fr", "ca"])
PAYMENTS = np.array(["credit card", "paypal", "bank transfer", "cash on delivery", "crypto"])
CHANNELS = np.array(["organic", "paid search", "referral", "partner"])
# How raw exports spell the same value; the simulator spec's category_aliases undo this.
MESSY_SPELLINGS = {
    "country": {"us": ["US", "USA", "United States"], "uk": ["UK", "U.K.", "United Kingdom"],
                "de": ["DE", "Germany"], "fr": ["FR"], "ca": ["CA"]},
    "payment_method": {"credit card": ["Credit Card", "CC", "creditcard"],
                       "paypal": ["PayPal", "Pay Pal"], "bank transfer": ["Bank Transfer"],
                       "cash on delivery": ["Cash on Delivery", "COD"], "crypto": ["Crypto"]},
    "plan": {"basic": ["Basic", "basic "], "pro": ["Pro", "Professional"],
             "enterprise": ["Enterprise"]},
}


# Named scenarios, each starting on ``SimulatorSettings.scenario_start`` (a Monday):
# what the loop must survive unattended. "stable" is the slow drift alone.
SCENARIOS = {
    "stable": "the slow drift alone",
    "concept_shift": "from the start date churn follows other signals: support trouble, discounts and"
                     " cash payments matter far more, engagement far less",
    "new_category": "from the start date a new payment method, 'crypto', spreads among the customers;"
                    " its users churn much more",
    "missing_feature": "for two weeks from the start date sessions_last_30d is missing in every snapshot",
}
NEW_PAYMENT = "crypto"


@dataclass(frozen=True)
class SimulatorSettings:
    n_customers: int = 3000
    start_date: str = DEFAULT_START
    seed: int = 7
    horizon_days: int = 28
    scenario: str = "stable"
    scenario_start: str = "2026-07-06"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown simulator scenario {self.scenario!r}; choose from {sorted(SCENARIOS)}")

    def scenario_week(self) -> int:
        """Index of the first week the scenario acts on (never, for "stable")."""
        if self.scenario == "stable":
            return 1 << 30
        return max(0, week_of(self, pd.Timestamp(self.scenario_start)))


def week_of(settings: SimulatorSettings, as_of: pd.Timestamp) -> int:
    """Index of the newest snapshot week on or before ``as_of`` (-1 if none)."""
    days = (as_of.normalize() - pd.Timestamp(settings.start_date)).days
    return days // 7 if days >= 0 else -1


class _Population:
    """Per-customer state, grown by signups and advanced one week at a time."""

    def __init__(self) -> None:
        self.cols: dict[str, np.ndarray] = {}

    def add(self, new: dict[str, np.ndarray]) -> None:
        for key, values in new.items():
            old = self.cols.get(key)
            self.cols[key] = values if old is None else np.concatenate([old, values])

    def __len__(self) -> int:
        return len(self.cols.get("number", ()))


def _new_customers(rng: np.random.Generator, count: int, first_number: int, signup_day: np.ndarray
                   ) -> dict[str, np.ndarray]:
    plan = rng.choice(3, size=count, p=[0.5, 0.35, 0.15])
    return {
        "number": np.arange(first_number, first_number + count),
        "signup_day": signup_day,
        "age": rng.normal(38, 11, count).clip(18, 80).round(),
        "country": rng.choice(5, size=count, p=[0.4, 0.2, 0.15, 0.1, 0.15]),
        "plan": plan,
        "seats": np.where(plan == 2, rng.integers(10, 200, count),
                          np.where(plan == 1, rng.integers(2, 20, count), 1)).astype(float),
        "payment": rng.choice(4, size=count, p=[0.5, 0.25, 0.15, 0.1]),
        "channel": rng.choice(4, size=count, p=[0.4, 0.3, 0.2, 0.1]),
        "baseline_engagement": rng.normal(0, 1, count),
        "engagement": rng.normal(0, 1, count),
        "discount_share": rng.beta(1.2, 6, count).round(3),
        "churn_day": np.full(count, np.iinfo(np.int64).max),
    }


def simulate(settings: SimulatorSettings, as_of: str | pd.Timestamp) -> pd.DataFrame:
    """All snapshot rows published on or before ``as_of``, labelled as known on ``as_of``.

    Returns one row per (customer_id, snapshot_date) with an ``updated_at`` column: the
    snapshot date, or the churn date if a churn inside the label window flipped the label.
    """
    as_of = pd.Timestamp(as_of).normalize()
    last_week = week_of(settings, as_of)
    if last_week < 0:
        return _frame([], settings)
    start = pd.Timestamp(settings.start_date)
    as_of_day = (as_of - start).days
    population = _Population()
    frames = []
    weekly_signups = max(1, round(settings.n_customers * 0.03))
    event = settings.scenario_week()
    for week in range(last_week + 1):
        rng = np.random.default_rng([settings.seed, week])
        day = 7 * week
        if week == 0:
            tenure = rng.gamma(1.5, 250, settings.n_customers).round()
            population.add(_new_customers(rng, settings.n_customers, 0, -tenure))
        else:
            signup_day = day - rng.integers(1, 8, weekly_signups)
            population.add(_new_customers(rng, weekly_signups, len(population), signup_day))
        c = population.cols
        active = (c["signup_day"] <= day) & (c["churn_day"] > day)
        idx = np.flatnonzero(active)
        n = len(idx)
        # Engagement is sticky, pulled back to each customer's baseline, and the whole
        # base sags a little each week: the slow drift a weekly retrain must follow.
        drift = -0.012 * week
        c["engagement"][idx] = (0.8 * c["engagement"][idx] + 0.2 * c["baseline_engagement"][idx]
                                + rng.normal(0, 0.35, n))
        eng = c["engagement"][idx] + drift
        plan = c["plan"][idx]
        tenure_days = day - c["signup_day"][idx]
        sessions = rng.poisson(np.exp(2.6 + 0.55 * eng)).astype(float)
        orders = rng.poisson(np.exp(0.2 + 0.6 * eng + 0.3 * (plan == 2))).astype(float)
        never_ordered = (orders == 0) & (rng.random(n) < 0.5)
        aov = np.where(orders > 0, rng.lognormal(3.8 + 0.3 * plan, 0.4, n).round(2), np.nan)
        since_order = np.where(
            orders > 0, rng.integers(0, 30, n), 30 + rng.exponential(25 * np.exp(-0.4 * eng), n)
        ).round()
        since_order = np.where(never_ordered, np.nan, since_order)
        tickets = rng.poisson(0.4 + 1.2 * (eng < -0.8) + 0.3 * (plan == 0)).astype(float)
        discount = c["discount_share"][idx]
        spend = (c["seats"][idx] * PLAN_PRICE[plan] * (1 - discount)).round(2)
        age = np.where(rng.random(n) < 0.06, np.nan, c["age"][idx])

        shifted = settings.scenario == "concept_shift" and week >= event
        if settings.scenario == "new_category" and week >= event:
            # Adoption spreads: each week another 3% of the customers switch to the new method.
            switch = (rng.random(n) < 0.03) & (c["payment"][idx] != 4)
            c["payment"][idx[switch]] = 4
        payment = c["payment"][idx]
        logit = (-4.6 + 0.55 * (plan == 0) - 0.6 * (plan == 2) - 0.75 * eng
                 + 0.35 * tickets + 0.45 * (payment == 3)
                 - 0.0007 * np.minimum(tenure_days, 1500) + 0.012 * np.nan_to_num(since_order, nan=45.0)
                 + 0.3 * (c["channel"][idx] == 1) + 0.01 * (discount * 10) + 1.5 * (payment == 4))
        if shifted:
            # Another market: engagement and support no longer tell who leaves; heavy
            # discounts, big enterprise accounts and cash payers do.
            logit = (-4.3 + 0.9 * (plan == 2) - 0.3 * (plan == 0) + 5.0 * discount
                     + 1.2 * (payment == 3) + 0.6 * (c["channel"][idx] == 3) + 1.5 * (payment == 4))
        if settings.scenario == "missing_feature" and event <= week < event + 2:
            sessions = np.full(n, np.nan)
        churns = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        c["churn_day"][idx[churns]] = day + rng.integers(1, 8, int(churns.sum()))

        frames.append({
            "number": c["number"][idx], "day": np.full(n, day),
            "age": age, "tenure_days": tenure_days.astype(float), "seats": c["seats"][idx],
            "monthly_spend": spend, "sessions_last_30d": sessions, "orders_last_30d": orders,
            "avg_order_value": aov, "days_since_last_order": since_order,
            "support_tickets_last_90d": tickets, "discount_share": discount,
            "country": _spell(rng, "country", COUNTRIES[c["country"][idx]]),
            "plan": _spell(rng, "plan", PLANS[plan]),
            "payment_method": _spell(rng, "payment_method", PAYMENTS[c["payment"][idx]]),
            "acquisition_channel": CHANNELS[c["channel"][idx]],
        })

    rows = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    churn_day = population.cols["churn_day"][rows["number"]]
    in_window = (churn_day > rows["day"]) & (churn_day <= rows["day"] + settings.horizon_days)
    known = in_window & (churn_day <= as_of_day)
    rows["churned_within_28d"] = known.astype(np.int64)
    rows["updated_day"] = np.where(known, churn_day, rows["day"])
    return _frame(rows, settings)


def _spell(rng: np.random.Generator, column: str, canonical: np.ndarray) -> np.ndarray:
    """Write canonical labels the way a messy export would, for about one row in six."""
    out = canonical.astype(object)
    messy = rng.random(len(canonical)) < 0.17
    for value, spellings in MESSY_SPELLINGS[column].items():
        rows = np.flatnonzero(messy & (canonical == value))
        out[rows] = np.asarray(spellings, dtype=object)[rng.integers(0, len(spellings), len(rows))]
    return out


def _frame(rows, settings: SimulatorSettings) -> pd.DataFrame:
    columns = ["customer_id", "snapshot_date", "updated_at", "age", "tenure_days", "seats",
               "monthly_spend", "sessions_last_30d", "orders_last_30d", "avg_order_value",
               "days_since_last_order", "support_tickets_last_90d", "discount_share", "country",
               "plan", "payment_method", "acquisition_channel", "churned_within_28d"]
    if not len(rows):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    start = np.datetime64(settings.start_date, "D")
    frame = pd.DataFrame({k: v for k, v in rows.items() if k not in ("number", "day", "updated_day")})
    frame.insert(0, "customer_id", pd.Series(rows["number"]).map("C{:06d}".format).to_numpy())
    frame.insert(1, "snapshot_date", (start + rows["day"].astype("timedelta64[D]")).astype("datetime64[ns]"))
    frame.insert(2, "updated_at", (start + rows["updated_day"].astype("timedelta64[D]")).astype("datetime64[ns]"))
    return frame[columns]

"""What the evaluation hands to the gate and the registry: one typed report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EvaluationReport:
    """Challenger and champion scored in the same run on the same holdout rows.

    ``challenger`` / ``champion``: metric name -> value (``metrics.METRIC_NAMES``);
    ``champion`` is None on a bootstrap run (nothing in production yet).
    ``comparisons``: per metric, the paired challenger - champion difference with its
    confidence interval (empty without a champion).
    """

    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None
    champion_fingerprint: str | None
    challenger_fingerprint: str
    holdout_rows: int
    holdout_churn_rate: float
    data_window: dict
    model_family: str
    threshold: float
    comparisons: dict[str, dict] = field(default_factory=dict)

    @property
    def bootstrap(self) -> bool:
        return self.champion is None

    def to_dict(self) -> dict:
        return asdict(self)

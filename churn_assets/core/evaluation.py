"""What the evaluation hands to the gate and the registry: one typed report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EvaluationReport:
    """Challenger and champion scored in the same run on the same holdout rows.

    ``challenger`` / ``champion``: metric name -> value (``metrics.METRIC_NAMES``);
    ``champion`` is None on a bootstrap run (nothing in production yet).
    ``comparisons``: per metric, the paired challenger - champion difference with its
    confidence interval (``dataclasses.asdict`` of ``uncertainty.PairedDifference``;
    empty without a champion).
    ``calibration``: expected calibration error of each model on the holdout
    (``challenger_ece``, and ``champion_ece`` when there is a champion).
    ``plots``: PNG bytes by plot name (tens of kB each), so ``deployed_model`` can save
    them beside the registry version without drawing them again.
    ``importance``: raw-feature permutation importance, (feature, mean, std) rows.
    ``drift``: an optional list of per-feature drift dicts (``feature``, ``psi``,
    ``status``) measured at training time, for the model card; None when not measured.
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
    calibration: dict[str, float] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict, repr=False)
    importance: list[tuple[str, float, float]] = field(default_factory=list)
    drift: list[dict] | None = None

    @property
    def bootstrap(self) -> bool:
        return self.champion is None

    def to_dict(self, include_plots: bool = False) -> dict:
        """Plain dict; PNG bytes are left out unless asked for (they are not JSON)."""
        body = asdict(self)
        if not include_plots:
            body.pop("plots")
        return body

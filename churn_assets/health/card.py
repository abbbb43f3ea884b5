"""A markdown model card for one registered model version, from a plain dict.

Every key except ``version`` is optional: a card is written for bootstrap models (no
champion, no comparisons), for models whose gate never ran, and for old registry
entries that predate some fields. Missing pieces render as a short "not recorded"
line instead of raising, because a half-empty card is more useful than none.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

# A card rendered without the settings' text (``[model_card] intended_use``, with a default
# per feature spec) says so rather than guessing who the customers are.
DEFAULT_INTENDED_USE = ("Not recorded for this version: set `[model_card] intended_use` in the settings"
                        " (docs/configuration.md) to describe the customers and decisions it is for.")
# Losses: a negative difference (challenger - champion) is an improvement for these.
LOWER_IS_BETTER = {"brier_score", "log_loss"}
NOT_RECORDED = "_not recorded_"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "–"
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _signed(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return f"{value:+.4f}"
    return _fmt(value)


def _champion_label(card: dict) -> str:
    return f"champion {card['champion_version']}" if card.get("champion_version") else "champion"


def _span(value: Any) -> str:
    if isinstance(value, dict):
        start, end = value.get("start"), value.get("end")
        return f"{_fmt(start)} → {_fmt(end)}" if start is not None or end is not None else _fmt(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{_fmt(value[0])} → {_fmt(value[1])}"
    return _fmt(value)


def _summary(card: dict) -> str:
    metrics = card.get("metrics") or {}
    champion = card.get("champion_metrics") or {}
    parts = [f"**{card['version']}**"]
    if card.get("model_family"):
        parts.append(str(card["model_family"]))
    if card.get("threshold") is not None:
        parts.append(f"decision threshold {_fmt(card['threshold'], 3)}")
    if "roc_auc" in metrics:
        auc = f"holdout ROC AUC {_fmt(metrics['roc_auc'])}"
        if "roc_auc" in champion:
            auc += f" ({_champion_label(card)}: {_fmt(champion['roc_auc'])})"
        parts.append(auc)
    gate = card.get("gate")
    if isinstance(gate, dict) and "passed" in gate:
        parts.append("gate **passed**" if gate["passed"] else "gate **refused**")
    return " · ".join(parts)


WINDOW_ROWS = (("train", "train (the evaluated fit)"), ("embargo", "embargo (label horizon, unused)"),
               ("validation", "validation"), ("holdout", "holdout"), ("serving", "the deployed fit's weeks"))


def _data_section(card: dict) -> list[str]:
    lines = ["## Data", ""]
    spec = card.get("feature_spec") or {}
    if spec:
        lines += _table(["field", "value"], [
            ["spec", spec.get("name")], ["id column", spec.get("id_column")],
            ["timestamp column", spec.get("timestamp_column")], ["target column", spec.get("target_column")],
            ["positive label", spec.get("positive_label")],
            [f"numeric features ({len(spec.get('numeric_features') or [])})", spec.get("numeric_features")],
            [f"categorical features ({len(spec.get('categorical_features') or [])})",
             spec.get("categorical_features")],
        ])
    else:
        lines.append(f"Feature spec: {NOT_RECORDED}")
    lines.append("")
    window = card.get("data_window") or {}
    if window:
        # Two fits: the evaluated one (train weeks) is what the holdout judged; the deployed
        # one (serving weeks) is the same family refit on the newest weeks with final labels.
        rows = [[label, _span(window.get(split))] for split, label in WINDOW_ROWS if window.get(split)]
        rows += [[key.replace("_", " "), window.get(key)] for key in ("as_of", "label_cutoff") if key in window]
        lines += _table(["window", "span"], rows)
    else:
        lines.append(f"Data window: {NOT_RECORDED}")
    lines += ["", _label_sentence(spec)]
    if card.get("holdout_rows") is not None:
        lines.append("")
        lines.append(f"Holdout rows: {card['holdout_rows']:,}" if isinstance(card["holdout_rows"], int)
                     else f"Holdout rows: {card['holdout_rows']}")
    return lines


def _label_sentence(spec: dict) -> str:
    """What a label means, for a horizon of H days (H > 0: known H days after the
    snapshot) or 0 (the source's own flag, final when it arrives)."""
    horizon = spec.get("label_horizon_days")
    target = f"`{spec['target_column']}`" if spec.get("target_column") else "the target column"
    if horizon is None:
        return f"Label horizon: {NOT_RECORDED}"
    if horizon == 0:
        return (f"Label horizon: none. A snapshot's label is the source's own churn flag ({target}) as"
                " it was sent, taken as final when it arrives.")
    day = "day" if horizon == 1 else "days"
    return (f"Label horizon: {horizon} {day} (a snapshot's label is whether the customer churned within"
            f" {horizon} {day} after it, so it is final only {horizon} {day} later).")


def _metrics_section(card: dict) -> list[str]:
    lines = ["## Metrics", ""]
    metrics = card.get("metrics") or {}
    champion = card.get("champion_metrics") or {}
    comparisons = {c.get("metric"): c for c in card.get("comparisons") or [] if isinstance(c, dict)}
    if not metrics:
        return lines + [f"Metrics: {NOT_RECORDED}"]
    if champion:
        lines.append(f"Challenger and {_champion_label(card)} scored on the same holdout rows; "
                     "Δ = challenger − champion.")
    else:
        lines.append("No champion to compare with (bootstrap model): challenger metrics only.")
    lines.append("")
    header, rows = ["metric", "challenger"], []
    if champion:
        header += ["champion", "Δ", "95% CI of Δ"]
    for name, value in metrics.items():
        row = [name, value]
        if champion:
            other = champion.get(name)
            comparison = comparisons.get(name) or {}
            delta = comparison.get("difference")
            if delta is None and isinstance(value, (int, float)) and isinstance(other, (int, float)):
                delta = value - other
            ci = ""
            if comparison.get("ci_low") is not None and comparison.get("ci_high") is not None:
                ci = f"[{_signed(comparison['ci_low'])}, {_signed(comparison['ci_high'])}]"
                ci += f" ({comparison['method']})" if comparison.get("method") else ""
            note = " (lower is better)" if name in LOWER_IS_BETTER else ""
            row = [name + note, value, other, _signed(delta) if delta is not None else None, ci or None]
        rows.append(row)
    lines += _table(header, rows)
    calibration = card.get("calibration") or []
    if calibration:
        # An ECE means little without the ECE chance alone gives on as many rows.
        lines += ["", "Calibration error (ECE) beside what a perfectly calibrated model would show on as"
                  " many holdout rows (mean and 95th percentile):", ""]
        lines += _table(["model", "ECE", "calibrated model (mean)", "95th percentile", "verdict"],
                        [[r.get("model"), r.get("ECE"), r.get("calibrated model would show (mean)"),
                          r.get("95th percentile"), r.get("verdict")] for r in calibration])
    return lines


def _gate_section(card: dict) -> list[str]:
    lines = ["## Gate verdict", ""]
    gate = card.get("gate")
    if not isinstance(gate, dict) or not gate:
        return lines + [f"Gate: {NOT_RECORDED}"]
    verdict = "PASSED" if gate.get("passed") else "REFUSED" if "passed" in gate else "unknown"
    lines.append(f"**{verdict}**" + (" (bootstrap: no champion, absolute floors only)" if gate.get("bootstrap") else ""))
    outcomes = [o for o in gate.get("outcomes") or [] if isinstance(o, dict)]
    if outcomes:
        lines.append("")
        lines += _table(["rule", "challenger", "champion", "floor", "max regression", "passed", "reason"],
                        [[o.get("metric"), o.get("challenger"), o.get("champion"), o.get("floor"),
                          o.get("max_regression"), o.get("passed"), o.get("reason")] for o in outcomes])
    return lines


def _drift_section(card: dict, top: int = 10) -> list[str]:
    lines = ["## Drift at training time", ""]
    drift = [d for d in card.get("drift") or [] if isinstance(d, dict)]
    if not drift:
        return lines + [f"Drift: {NOT_RECORDED}"]

    def psi(d: dict) -> float:
        value = d.get("psi")
        return value if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf

    ranked = sorted(drift, key=psi, reverse=True)[:top]
    lines.append(f"Population stability index of the newest data against the training window "
                 f"(top {len(ranked)} of {len(drift)} columns).")
    lines.append("")
    return lines + _table(["feature", "PSI", "status"], [[d.get("feature"), d.get("psi"), d.get("status")]
                                                          for d in ranked])


def _plots_section(card: dict) -> list[str]:
    lines = ["## Plots", ""]
    plots = card.get("plots") or {}
    if not plots:
        return lines + [f"Plots: {NOT_RECORDED}"]
    for name, file_name in plots.items():
        title = str(name).replace("_", " ")
        lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    return lines[:-1]


def render_model_card(card: dict) -> str:
    """Markdown model card: summary, intended use, data, metrics, gate, drift, plots, provenance.

    ``card`` needs ``version``; see the module docstring for the optional keys. Metric
    values are floats in their natural units (AUCs in [0, 1], losses >= 0); plots are
    file names relative to the card's own location.
    """
    card = dict(card or {})
    card.setdefault("version", "unknown")
    lines = [f"# Model card: churn model {card['version']}", "", _summary(card), "",
             "## Intended use", "", str(card.get("intended_use") or DEFAULT_INTENDED_USE), ""]
    for section in (_data_section, _metrics_section, _gate_section, _drift_section, _plots_section):
        lines += section(card) + [""]
    lines += ["## Provenance", ""]
    lines += _table(["field", "value"], [
        ["version", card.get("version")], ["registered at", card.get("registered_at")],
        ["run id", card.get("run_id")], ["code version", card.get("code_version")],
        ["champion at training time", card.get("champion_version")],
    ])
    return "\n".join(lines) + "\n"

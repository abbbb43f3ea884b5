"""``churn-assets versions`` as text: the registry's history read at a glance.

Lines stay within ``WIDTH`` characters (a terminal, a ticket, a chat message); dates
are UTC minutes, windows are "2026-04-06 to 2026-04-19", and every metric delta says
whether the challenger was better or worse (a negative Brier score delta is better).
Input: ``reporting.registry_history``'s dict. No Dagster, no I/O.
"""

from __future__ import annotations

import math
import textwrap

from churn_assets.core.metrics import HIGHER_IS_BETTER
from churn_assets.health.gate_words import metric_label
from churn_assets.storage.pointer import pin_text, shown_time

WIDTH = 120
INDENT = " " * 9
# The metrics the default gate judges, in the order they are listed per version.
SHOWN_METRICS = ("roc_auc", "pr_auc", "brier_score")


def when(value) -> str:
    """"2026-05-11 03:02 UTC" from an ISO time; "?" when missing, the text itself if unparsable."""
    return shown_time(value, seconds=False) if value else "?"


def span(value) -> str:
    """A [first, last] window as "2026-04-06 to 2026-04-19"."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]} to {value[1]}"
    return "-" if value is None else str(value)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def delta_words(metric: str, difference, ci_low=None, ci_high=None) -> str:
    """"+0.0586 better (95% CI +0.041 to +0.076)": the sign as measured, the word by the
    metric's direction (ROC AUC up is better, Brier score down is better)."""
    if not _finite(difference):
        return "no comparison"
    if difference == 0:
        word = "equal"
    else:
        word = "better" if (difference > 0) == (metric in HIGHER_IS_BETTER) else "worse"
    text = f"{difference:+.4f} {word}"
    if _finite(ci_low) and _finite(ci_high):
        text += f" (95% CI {ci_low:+.3f} to {ci_high:+.3f})"
    return text


def _wrapped(text: str, first: str = "", rest: str = INDENT) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False) or [first.rstrip()]


def _metric_line(d: dict) -> str:
    metrics, comparisons = d.get("metrics") or {}, d.get("comparisons") or {}
    champion = d.get("champion_metrics") or {}
    parts = []
    for name in SHOWN_METRICS:
        value = metrics.get(name)
        if not _finite(value):
            continue
        c = comparisons.get(name) or {}
        difference = c.get("difference")
        if not _finite(difference) and _finite(champion.get(name)):
            difference = value - champion[name]
        label = metric_label(name).replace("calibration error (ECE)", "ECE")
        if d.get("champion_version") is None:
            parts.append(f"{label} {value:.4f}")
        elif name == "roc_auc":  # the headline metric, with its interval
            parts.append(f"{label} {value:.4f}, {delta_words(name, difference, c.get('ci_low'), c.get('ci_high'))}")
        else:
            parts.append(f"{label} {delta_words(name, difference)}")
    return "; ".join(parts) or "metrics not recorded"


def _version_lines(v: dict) -> list[str]:
    window = v.get("data_window") or {}
    head = (f"{'*' if v.get('production') else ' '} {v['version']}  registered {when(v.get('registered_at'))}"
            f"  data as of {v.get('as_of') or '?'}  holdout {span(window.get('holdout'))}")
    champion = v.get("champion_version")
    passed = v.get("gate_passed")
    if champion is None:
        gate = "first version: no champion, gate floors only" if passed is not False else "gate refused"
    else:
        gate = {True: f"gate passed against {champion}", False: f"gate refused against {champion}",
                None: f"gate not recorded (champion {champion})"}[passed]
    lines = _wrapped(head)
    lines += _wrapped(f"{v.get('model_family') or '?'}; {gate}", INDENT)
    lines += _wrapped(_metric_line(v), INDENT)
    return lines


def _event_line(e: dict) -> list[str]:
    kind, version = e.get("event"), e.get("version")
    if kind == "unpin":
        return _wrapped(f"{when(e.get('at'))}  {version} unpinned by {e.get('by') or '?'}", "  ", " " * 4)
    reason = str(e.get("reason") or "")
    pin = e.get("pinned") if isinstance(e.get("pinned"), dict) else None
    if reason.startswith("rollback from"):
        what = f"{version} rolled back from {e.get('previous')}"
    elif pin:
        what = f"{version} promoted by hand (was {e.get('previous')})"
    elif e.get("run_id"):
        what = f"{version} promoted by run {str(e['run_id'])[:8]} ({reason})"
    else:
        what = f"{version} promoted ({reason})"
    if pin:
        what += f", pinned by {pin.get('by') or 'the operator'}"
    return _wrapped(f"{when(e.get('promoted_at'))}  {what}", "  ", " " * 4)


def _candidate_lines(c: dict) -> list[str]:
    against = f"against {c['champion_version']}" if c.get("champion_version") else "no champion"
    mark = "= held   " if c.get("held") else "x refused"
    lines = _wrapped(f"{mark}  {when(c.get('recorded_at'))}  run {str(c.get('run_id'))[:8]}"
                     f"  {c.get('model_family') or '?'}, {against}", "  ", " " * 6)
    if c.get("held"):
        lines += _wrapped(f"{c.get('verdict')}; it passed the gate: {_metric_line(c)}", " " * 6, " " * 6)
    else:
        for rule in c.get("refused_in_words") or c.get("failed_rules") or []:
            lines += _wrapped(rule, " " * 6, " " * 8)
    return lines


def _production_lines(history: dict) -> list[str]:
    production = history.get("production")
    if production is None:
        return ["production: none yet"]
    pointer = history.get("pointer") or {}
    text = f"production: {production} since {when(pointer.get('promoted_at'))}"
    if history.get("pinned"):
        text += (f", {pin_text(pointer)}; refreshes record their challengers as held until"
                 " `churn-assets unpin`")
    return _wrapped(text, "", "  ")


def _risk_list_lines(risk_list: dict | None) -> list[str]:
    if not risk_list:
        return []
    state = risk_list.get("state") or {}
    if risk_list.get("stale"):
        text = (f"risk list: NOT scored by production: {risk_list['stale']}; the next run rescores it"
                " before anything else (or `churn-assets materialize --select churn_scores`)")
    else:
        text = (f"risk list: {state.get('customers')} customers scored by {state.get('version')}"
                f" at {when(state.get('written_at'))}, newest snapshots {state.get('newest_snapshot') or '?'}")
    return _wrapped(text, "", "  ")


def format_history(history: dict) -> str:
    """``registry_history`` for the terminal: production and its pin, the risk list, the
    versions (* = production), the production changes, then the challengers refused or
    held with their reasons in words."""
    if not history["versions"] and not history["candidates"]:
        return f"no model versions in {history['registry']}"
    lines = _production_lines(history) + _risk_list_lines(history.get("risk_list"))
    if history["versions"]:
        lines += ["", "versions (* = production):"]
        for v in history["versions"]:
            lines += _version_lines(v)
    if history.get("events"):
        lines += ["", "production changes:"]
        for e in history["events"]:
            lines += _event_line(e)
    if history["candidates"]:
        lines += ["", f"challengers not deployed ({len(history['candidates'])}):"]
        for c in history["candidates"]:
            lines += _candidate_lines(c)
    return "\n".join(lines)

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
from churn_assets.health.gate_words import interval, metric_label
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
        text += f" (95% CI {interval(ci_low, ci_high)})"
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
    calibration = calibration_line(v.get("calibration"))
    if calibration:
        lines += _wrapped(calibration, INDENT)
    return lines


def calibration_line(rows) -> str:
    """"ECE 0.0130, within noise (a calibrated model: 0.0098, 95th percentile 0.0140)"
    for each model of ``reporting.calibration_rows``; "" without them."""
    parts = []
    for row in rows or []:
        ece, mean, p95 = row.get("ECE"), row.get("calibrated model would show (mean)"), row.get("95th percentile")
        if not _finite(ece):
            continue
        who = "" if row.get("model") == "challenger" else f"{row.get('model')} "
        floor = (f" (a calibrated model: {mean:.4f}, 95th percentile {p95:.4f})"
                 if _finite(mean) and _finite(p95) else "")
        parts.append(f"{who}ECE {ece:.4f}, {row.get('verdict')}{floor}")
    return "; ".join(parts)


def event_words(e: dict) -> tuple[str, str]:
    """(when, what) of one events.jsonl record: ("2026-05-12 09:14 UTC", "v0001 rolled
    back from v0002, pinned by alice")."""
    kind, version = e.get("event"), e.get("version")
    if kind == "unpin":
        return when(e.get("at")), f"{version} unpinned by {e.get('by') or '?'}"
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
    return when(e.get("promoted_at")), what


def _event_line(e: dict) -> list[str]:
    at, what = event_words(e)
    return _wrapped(f"{at}  {what}", "  ", " " * 4)


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


def _roc_cell(d: dict) -> str:
    """"0.8123 [0.7954, 0.8292]": the holdout ROC AUC with its own 95% interval (normal,
    from the DeLong standard error) where the version recorded one."""
    value, se = d.get("roc_auc"), d.get("roc_auc_se")
    if not _finite(value):
        return "-"
    if _finite(se):
        return f"{value:.4f} [{value - 1.96 * se:.4f}, {min(1.0, value + 1.96 * se):.4f}]"
    return f"{value:.4f}"


def _verdict_cell(d: dict) -> str:
    champion = d.get("champion_version")
    c = (d.get("comparisons") or {}).get("roc_auc") or {}
    delta = delta_words("roc_auc", d.get("delta_roc_auc"), c.get("ci_low"), c.get("ci_high"))
    if d.get("held"):
        return f"passed against {champion}, {d.get('verdict')}; ROC AUC {delta}"
    if d.get("gate_passed") is False:
        rules = d.get("refused_in_words") or d.get("failed_rules") or ["a gate rule failed"]
        return "refused: " + "; ".join(rules)
    if champion is None:
        return "first version: no champion, gate floors only"
    return f"passed against {champion}; ROC AUC {delta}" if d.get("gate_passed") else (
        f"not recorded (champion {champion})")


def _unbroken(date) -> str:
    """A date whose hyphens do not wrap (U+2011): table columns are narrow in the UI,
    and "2026-" over "05-04" reads badly."""
    return str(date).replace("-", "\u2011") if date else "?"


def history_rows(history: dict) -> list[dict]:
    """``registry_history`` as table rows, oldest first: each version (with its production
    changes: promoted, rolled back to or from, pinned, unpinned; when and by whom) and each
    challenger refused or held, by the time it was registered or recorded."""
    changes: dict[str, list[str]] = {}
    for e in history.get("events") or []:
        at, what = event_words(e)
        changes.setdefault(str(e.get("version")), []).append(f"{at}: {what}")
        if str(e.get("reason") or "").startswith("rollback from") and e.get("previous"):
            changes.setdefault(str(e["previous"]), []).append(f"{at}: rolled back (production went to {e.get('version')})")
    timed = []
    for v in history.get("versions") or []:
        mark = " (production" + (", pinned)" if history.get("pinned") else ")") if v.get("production") else ""
        timed.append((str(v.get("registered_at") or ""), {
            "version": f"**{v['version']}**{mark}", "data as of": _unbroken(v.get("as_of")),
            "family": v.get("model_family") or "?", "ROC AUC [95% CI]": _roc_cell(v), "verdict": _verdict_cell(v),
            "production changes (when, by whom)": "; ".join(changes.get(v["version"], [])) or "never promoted"}))
    for c in history.get("candidates") or []:
        kind = "held" if c.get("held") else "refused"
        timed.append((str(c.get("recorded_at") or ""), {
            "version": f"- ({kind}, run {str(c.get('run_id'))[:8]})", "data as of": _unbroken(c.get("as_of")),
            "family": c.get("model_family") or "?", "ROC AUC [95% CI]": _roc_cell(c), "verdict": _verdict_cell(c),
            "production changes (when, by whom)": f"{when(c.get('recorded_at'))}: not deployed"
                                                  f" (recorded by {c.get('recorded_by') or '?'})"}))
    return [row for _, row in sorted(timed, key=lambda t: t[0])]

"""``backtest``: replay the weekly policy over past weeks, in memory, and report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from churn_assets.cli.parsing import iso_date
from churn_assets.settings import load_settings


def _write(path: Path, data: bytes) -> None:
    from churn_assets.storage.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def cmd_backtest(ns: argparse.Namespace) -> int:
    from churn_assets.defs.backtest import BacktestError, run_backtest
    from churn_assets.defs.definitions import build_resources
    from churn_assets.health import backtest_report

    settings = load_settings()
    resources = build_resources(settings)
    families = ns.families or ["logistic_regression", "hist_gradient_boosting"]
    say = (lambda m: None) if ns.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        result = run_backtest(resources["customer_source"], resources["storage"], resources["training_plan"],
                              resources["gate_rules"], ns.start, ns.end, families, ns.seed, progress=say)
    except BacktestError as exc:
        print(f"churn-assets backtest: {exc}", file=sys.stderr)
        return 2
    if ns.json:
        _write(Path(ns.json), json.dumps(result, indent=1, default=str).encode())
    if ns.report:
        report = Path(ns.report)
        images = {}
        for name, png in backtest_report.plots(result).items():
            target = report.with_name(f"{report.stem}_{backtest_report.PLOT_FILES[name]}")
            _write(target, png)
            images[name] = target.name
        _write(report, backtest_report.render_markdown(result, images).encode())
    s, p = result["summary"], result["policies"]
    print(f"backtest {ns.start} .. {ns.end}: {len(result['weeks'])} weeks in {s['seconds']} s")
    for name, row in p.items():
        mean = "-" if row["mean_realized_roc_auc"] is None else f"{row['mean_realized_roc_auc']:.4f}"
        print(f"  {name:<14} mean realized ROC AUC {mean}, {_count(row['deploys'], 'deploy')},"
              f" {_count(row['decay_alarms'], 'decay alarm')}")
    for family, bias in s["holdout_bias"].items():
        if bias["mean"] is not None:
            print(f"  holdout bias ({family}): mean {bias['mean']:+.4f}, max {bias['max']:+.4f}")
    if s["estimate_coverage"] is not None:
        print(f"  estimate: interval covered {s['estimate_coverage']:.0%} of {s['estimated_weeks']} weeks,"
              f" mean absolute error {s['estimate_mae']:.4f}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("backtest", help="replay the weekly refresh over past weeks without touching production",
                       description="Replay the configured weekly policy (split, train, calibrate, evaluate,"
                                   " gate) for every week from --from to --to, in memory, and judge each"
                                   " decision on the weeks that followed. Compares the gate with always"
                                   " deploying and never retraining. Writes nothing but --json and --report.")
    p.add_argument("--from", dest="start", required=True, type=iso_date, metavar="YYYY-MM-DD",
                   help="first weekly as_of to replay")
    p.add_argument("--to", dest="end", required=True, type=iso_date, metavar="YYYY-MM-DD",
                   help="last weekly as_of to replay")
    p.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="model families to try (default: both)")
    p.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--report", metavar="PATH.md", help="write a markdown report, its plots beside it")
    p.add_argument("--quiet", action="store_true", help="no progress line per week on stderr")
    p.set_defaults(func=cmd_backtest)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

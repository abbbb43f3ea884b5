"""Markdown for Dagster metadata (pandas' to_markdown needs an extra package)."""

from __future__ import annotations

import math


def _cell(value) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of ``rows`` (dicts), in ``columns`` order."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)

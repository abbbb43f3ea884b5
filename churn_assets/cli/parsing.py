"""Argument types shared by the commands."""

from __future__ import annotations

import argparse


def iso_date(text: str) -> str:
    """argparse type: a YYYY-MM-DD date, checked before anything runs."""
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat() if text else ""
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None

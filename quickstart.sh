#!/usr/bin/env bash
# Set up a virtual environment, install churn_assets, and run the weekly refresh once
# on the embedded simulator. State goes to $CHURN_ASSETS_HOME (default ~/.churn_assets).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/churn-assets materialize
.venv/bin/churn-assets versions

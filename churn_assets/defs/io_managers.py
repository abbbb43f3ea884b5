"""Persist fitted estimators with joblib, one file per asset, replaced atomically."""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import joblib

from churn_assets.storage.atomic import atomic_write_bytes


class JoblibIOManager(dg.ConfigurableIOManager):
    base_dir: str

    def _path(self, key: dg.AssetKey) -> Path:
        return Path(self.base_dir).expanduser() / ("/".join(key.path) + ".joblib")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        buf = io.BytesIO()
        joblib.dump(obj, buf)
        path = self._path(context.asset_key)
        atomic_write_bytes(path, buf.getvalue())
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)),
                                     "bytes": len(buf.getvalue())})

    def load_input(self, context: dg.InputContext):
        path = self._path(context.asset_key)
        if not path.exists():
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized ({path})")
        return joblib.load(path)

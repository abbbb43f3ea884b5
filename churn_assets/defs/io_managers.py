"""Step outputs: fitted estimators with joblib, everything else pickled by Dagster.

Both live under the data directory, so with an ``s3://`` home every Celery worker reads
what another one wrote: there an output is one PUT (whole or absent), locally a file
replaced atomically (JoblibIOManager) or Dagster's own FilesystemIOManager.
"""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import joblib

from churn_assets.storage import location
from churn_assets.storage.atomic import atomic_write_bytes


class ObjectStoreIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled step outputs under an ``s3://`` URL: Dagster's UPath-based pickling IO
    manager (the one inside ``dg.FilesystemIOManager``), given the endpoint settings of
    storage/location.py so it reaches the same storage as the rest of the data directory."""

    base_dir: str

    def create_io_manager(self, context) -> dg.UPathIOManager:
        # Not re-exported at the top level; it is what FilesystemIOManager builds.
        from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

        return PickledObjectFilesystemIOManager(base_dir=self.base_dir, **location.storage_options())


def step_output_io_manager(base) -> dg.ConfigurableIOManagerFactory:
    """The pickling IO manager for ``base`` (a local folder or an s3:// location)."""
    if location.is_remote(base):
        return ObjectStoreIOManager(base_dir=location.url(base))
    return dg.FilesystemIOManager(base_dir=str(base))


class JoblibIOManager(dg.ConfigurableIOManager):
    base_dir: str

    def _path(self, key: dg.AssetKey) -> Path:
        return location.location(self.base_dir) / ("/".join(key.path) + ".joblib")

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
        if location.is_remote(path):
            return joblib.load(io.BytesIO(path.read_bytes()))
        return joblib.load(path)

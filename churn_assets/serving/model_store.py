"""The model the server answers with, and how it follows the registry's production pointer.

Each server process (each uvicorn worker) owns one ``ModelStore``. A daemon thread
stats ``production.json`` every ``poll_seconds``; the registry replaces the pointer
by rename, so a changed inode, size or mtime means a promotion or rollback happened.
The new version is then loaded off the request path and published by one attribute
assignment of an immutable ``ServingModel``. A request reads ``store.current`` once
and uses only that object, so it is computed and labelled by one version even when
a swap lands mid-request, and nothing is ever locked on the request path.

Integrity: unpickling runs code, so the artifact is read into memory once, its
sha256 compared with the manifest's and the pointer's, and only those same bytes
are unpickled (no window between checking the file and loading it). A missing,
truncated or altered artifact is refused; the previous model keeps serving and
``problem`` says why (``/ready`` reports it, the log has it). A refused version is
retried when the pointer or the artifact file changes. When the artifact of the version
being served changes on disk (someone replaced model.joblib), it is hashed again: a
mismatch with the registry's sha256 is reported as ``disk_problem`` (``/ready`` says
degraded, ``/model`` says which file) while the verified copy in memory keeps serving.

On object storage (an ``s3://`` registry) there are no inodes: the poll asks for the
pointer object's ETag (one HEAD), which changes with every PUT, and the artifact's ETag
likewise; everything else, the sha256 checks included, is the same.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.storage import location
from churn_assets.storage.object_registry import open_registry
from churn_assets.storage.registry import ModelRegistry, RegistryError, file_sha256
from churn_assets.serving.explain import ChurnExplainer, explainer_for
from churn_assets.serving.fast_path import CompiledChurnModel, EncodedRecords, Uncompilable
from churn_assets.serving.schema import RecordSchema

log = logging.getLogger("churn_assets.serving")


@dataclass(frozen=True)
class ServingModel:
    """One loaded production version; never mutated after it is published."""

    version: str
    sha256: str
    manifest: dict
    pointer: dict
    predictor: ChurnPredictor
    compiled: CompiledChurnModel | None  # None: no exact fast path, pandas pipeline instead
    schema: RecordSchema
    loaded_at: float = field(default_factory=time.time)
    explainer: ChurnExplainer | None = None  # None: no explanations (no compiled form)

    @property
    def threshold(self) -> float:
        return float(self.predictor.threshold)

    def predict_one(self, numeric: list[float], categories: list[str | None]) -> float:
        if self.compiled is not None:
            return self.compiled.predict_one(numeric, categories)
        return float(self.predict_many(EncodedRecords(np.array([numeric]), [[t] for t in categories]))[0])

    def predict_many(self, records: EncodedRecords) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.predict_many(records)
        spec = self.predictor.spec
        frame = pd.DataFrame(records.numeric, columns=list(spec.numeric_features))
        for j, column in enumerate(spec.categorical_features):
            frame[column] = pd.Series(records.categories[j], dtype=object)
        return self.predictor.predict_proba(frame)


def load_serving_model(registry: ModelRegistry, pointer: dict, max_batch: int) -> ServingModel:
    """Verify and load the version ``pointer`` names; raises RegistryError saying why not."""
    version = registry.get(str(pointer.get("version")))
    expected = version.manifest.get("sha256")
    if pointer.get("sha256") not in (None, expected):
        raise RegistryError(f"{version.version}: the production pointer's sha256 differs from the"
                            " manifest's; refusing to load it")
    predictor = registry.load(version)
    if not isinstance(predictor, ChurnPredictor):
        raise RegistryError(f"{version.version}: artifact holds a {type(predictor).__name__},"
                            " not a ChurnPredictor")
    try:
        compiled = CompiledChurnModel(predictor)
    except Uncompilable as exc:
        log.warning("%s: no exact fast path (%s); serving through the pandas pipeline",
                    version.version, exc)
        compiled = None
    schema = RecordSchema(predictor.spec, compiled, max_batch)
    explainer = explainer_for(compiled, predictor) if compiled is not None else None
    return ServingModel(version.version, expected, version.manifest, pointer, predictor, compiled, schema,
                        explainer=explainer)


def _stat_key(path: Path) -> tuple | None:
    if location.is_remote(path):
        tag = location.etag(path)  # a new PUT, a new ETag; None when the object is absent
        return None if tag is None else ("etag", tag)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256(path) -> str:
    if location.is_remote(path):
        payload = location.read_bytes(path)
        if payload is None:
            raise FileNotFoundError(location.url(path))
        return hashlib.sha256(payload).hexdigest()
    return file_sha256(path)


class ModelStore:
    """Holds the current ServingModel and keeps it in step with the production pointer."""

    def __init__(self, registry_root: str | os.PathLike, max_batch: int = 10_000,
                 poll_seconds: float = 0.5) -> None:
        self.registry = open_registry(registry_root)
        self.max_batch = max_batch
        self.poll_seconds = poll_seconds
        self.current: ServingModel | None = None
        self.load_problem: str | None = None  # why the pointer's version is not the one serving
        self.disk_problem: str | None = None  # the served version's file no longer matches
        self._seen: tuple | None = None  # (pointer stat, artifact stat) last acted upon
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    def refresh(self) -> None:
        """Load the pointer's version if the pointer (or a refused artifact) changed."""
        with self._refresh_lock:
            try:
                pointer_key = _stat_key(self.registry.pointer_path)
            except location.StorageLocationError as exc:  # object storage unreachable: retry next poll
                still = f"still serving {self.current.version}" if self.current else "no model is being served"
                self.load_problem = f"cannot read the production pointer: {exc}; {still}"
                return
            if pointer_key is None:
                self._seen = None
                if self.current is None:
                    self.load_problem = "no production model deployed yet"
                return
            wanted = self._pointer_target()
            seen = (pointer_key, self._artifact_key(wanted))
            if seen == self._seen:
                return
            self._seen = seen
            self._switch_to(wanted)

    def _pointer_target(self) -> dict | None:
        try:
            return json.loads(self.registry.pointer_path.read_text())
        except (OSError, ValueError):
            return None

    def _artifact_key(self, pointer: dict | None) -> tuple | None:
        version = str((pointer or {}).get("version"))
        return _stat_key(self.registry.versions_dir / version / "model.joblib")

    def _switch_to(self, pointer: dict | None) -> None:
        serving = self.current.version if self.current else None
        if pointer is None:
            self._refuse("production.json is unreadable", serving)
            return
        if (self.current is not None and self.current.version == pointer.get("version")
                and self.current.sha256 == pointer.get("sha256")):
            self.current = replace(self.current, pointer=pointer)
            self.load_problem = None
            self.disk_problem = self._disk_mismatch(self.current)
            return
        started = time.perf_counter()
        try:
            model = load_serving_model(self.registry, pointer, self.max_batch)
        except Exception as exc:  # anything from a bad artifact: keep serving, say why
            self._refuse(f"{type(exc).__name__}: {exc}", serving)
            return
        self.current = model  # the single atomic publish
        self.load_problem = self.disk_problem = None
        # Move everything alive now (imported modules, the model) out of the cyclic
        # GC's reach: a full collection over the ~250k objects of a serving process
        # takes ~130 ms and stalled requests at random. Refcounting still frees the
        # old model when its last request ends; only cyclic garbage from before this
        # point would stay, which model loads do not produce in any quantity.
        gc.freeze()
        log.info("now serving %s (%s, fast path %s; was %s), loaded in %.0f ms", model.version,
                 model.predictor.family, "on" if model.compiled else "off", serving,
                 1000 * (time.perf_counter() - started))

    def _refuse(self, reason: str, serving: str | None) -> None:
        still = f"still serving {serving}" if serving else "no model is being served"
        self.load_problem = f"cannot load the production version: {reason}; {still}"
        log.error("%s", self.load_problem)

    def _disk_mismatch(self, model: ServingModel) -> str | None:
        """Why the served version's artifact on disk differs from the registry's, or None.

        Only called when the file's stat changed, so the hash is rare work. The model in
        memory was verified when it was loaded and stays safe to serve; what breaks is
        the next load of this version (a restart, another worker), hence the warning.
        """
        path = self.registry.versions_dir / model.version / "model.joblib"
        try:
            actual = _sha256(path)
        except OSError as exc:
            actual = None
            found = f"cannot be read ({type(exc).__name__})"
        else:
            found = f"has sha256 {actual[:12]}…"
        if actual == model.sha256:
            if self.disk_problem:
                log.info("%s: model.joblib on disk matches the registry again", model.version)
            return None
        message = (f"{model.version}: model.joblib on disk {found}, not the registered"
                   f" {model.sha256[:12]}…; still serving the copy verified at load, but a"
                   " restart would refuse it")
        log.error("%s", message)
        return message

    @property
    def problem(self) -> str | None:
        """Everything that is wrong, for /ready; None when all is well."""
        problems = [p for p in (self.load_problem, self.disk_problem) if p]
        return "; ".join(problems) or None

    # -- background polling --------------------------------------------------------------
    def start(self) -> None:
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="model-store-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("model store refresh failed; retrying")

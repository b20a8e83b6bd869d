"""MLflow tracking: a flow run is a parent run, each stage a nested run.

The only module that imports mlflow. Uses the explicit client API (run ids passed around), so it works
from Prefect's worker threads. Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a sqlite database in the
data root (or in ~/.cache/rlt-factory when the data root is remote). Params are redacted of secrets.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Mapping

from infra.settings import is_remote, redact

log = logging.getLogger(__name__)
EXPERIMENT = "rlt-factory"
_MAX_PARAM = 6000


def default_tracking_uri(root: str) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory") if is_remote(root) else root
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{name}."))
        else:
            out[name] = str(v)[:_MAX_PARAM]
    return out


class Tracker:
    """Thin wrapper over MlflowClient; ``enabled=False`` makes every call a no-op (unit tests)."""

    def __init__(self, root: str, uri: str | None = None, experiment: str = EXPERIMENT, enabled: bool = True):
        self.enabled = enabled
        self.uri = uri or default_tracking_uri(root)
        self._client = None
        self._experiment_id: str | None = None
        self._root = root
        self._experiment = experiment

    @property
    def client(self):
        if self._client is None:
            import mlflow
            from mlflow.tracking import MlflowClient

            logging.getLogger("alembic").setLevel(logging.WARNING)
            # a fresh sqlite store migrates its schema on first use: two runs starting at once must not both do it
            with self._init_lock():
                client = MlflowClient(tracking_uri=self.uri)
                exp = client.get_experiment_by_name(self._experiment)
                if exp is None:
                    location = None
                    if self.uri.startswith("sqlite:"):
                        location = f"{self._root}/mlruns" if is_remote(self._root) else \
                            "file://" + os.path.join(self._root, "mlruns")
                    self._experiment_id = self._create_experiment(client, location)
                else:
                    self._experiment_id = exp.experiment_id
            mlflow.set_tracking_uri(self.uri)
            self._client = client
        return self._client

    def _create_experiment(self, client, location: str | None) -> str:
        """Create the experiment; a server-backed store may see another run create it first (two nights
        starting together against one MLflow server): then the existing one is used."""
        from mlflow.exceptions import MlflowException

        try:
            return client.create_experiment(self._experiment, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(self._experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _init_lock(self):
        from infra.locks import file_mutex

        return file_mutex(self.uri.removeprefix("sqlite:///") + ".init.lock") if self.uri.startswith("sqlite:") \
            else contextlib.nullcontext()

    def start_run(self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        if not self.enabled:
            return ""
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self._experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        if self.enabled and run_id:
            self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Param

        flat = flatten(redact(dict(params)))
        items = [Param(k[:250], v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if self.enabled and run_id:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))

    def log_text(self, run_id: str, text: str, path: str) -> None:
        if self.enabled and run_id:
            self.client.log_text(run_id, text, path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled and run_id:
            self.client.log_artifact(run_id, local_path, artifact_path)

    def metric_logger(self, run_id: str):
        """A ``log_metric(name, value, step)`` callable for injection into rlt_core."""
        def log_metric(name: str, value: float, step: int = 0) -> None:
            self.log_metrics(run_id, {name: value}, step)
        return log_metric

    def text_logger(self, run_id: str):
        def log_text(name: str, text: str, step: int = 0) -> None:
            self.log_text(run_id, text, f"samples/{name}-step{step:05d}.txt")
        return log_text

    def ui_hint(self) -> str:
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return self.uri

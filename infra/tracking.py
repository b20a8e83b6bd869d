"""MLflow tracking: a flow run is a parent run, each stage a nested run.

The only module that imports mlflow. Uses the explicit client API (run ids passed around), so it works
from Prefect's worker threads. Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a sqlite database in the
data root (or in ~/.cache/rlt-factory when the data root is remote). Params are redacted of secrets.

Degraded tracking: MLflow records the work, it is not part of it. A tracking call that fails (server down,
timeout, 5xx, a broken store) never fails the data work. The first failure logs one warning (the tracking URI,
redacted, and what failed) and puts the whole process in degraded mode for that URI: no further call is tried
(each would pay the client's retries again). The failed call and every later one are journaled, secrets
redacted, in the data root: ``_tracking/pending/<rlt run id>/*.jsonl`` (see ``Journal``). ``rlt tracking status``
says what is missing, ``rlt tracking relog`` replays it (``relog``) once MLflow is back.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from infra.settings import is_remote, redact, redact_text

log = logging.getLogger(__name__)
EXPERIMENT = "rlt-factory"
_MAX_PARAM = 6000
LOCAL_PREFIX = "pending-"          # run ids handed out while MLflow is unreachable (journaled runs)
PENDING_DIR = "_tracking/pending"
# A dead server must cost seconds, not minutes. MLflow's defaults: 7 retries with a 2 s exponential backoff
# (about 4 minutes per call against a refused port) and 120 s per request. Bounded here: a refused connection
# costs ~2-3 s once, a server that accepts and hangs at most 3 x 10 s once; then the process is degraded and
# asks no more. An operator's own values in the environment win.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# journal segments are written at once for these ops; metric and text lines are batched (<= 500 lines / 5 s)
_FLUSH_OPS = frozenset({"header", "start", "end", "params", "tags", "artifact"})
_FLUSH_LINES, _FLUSH_S = 500, 5.0

_STATE = threading.RLock()
_DOWN: dict[str, str] = {}                            # tracking URI -> the first failure (process-wide)
_JOURNALS: dict[tuple[str, str], "Journal"] = {}      # (data root, rlt run id) -> its open journal
_HOOKS: list[bool] = []


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


def is_local(run_id: str | None) -> bool:
    return bool(run_id) and run_id.startswith(LOCAL_PREFIX)


def bound_http_retries() -> None:
    for k, v in HTTP_BOUNDS.items():
        os.environ.setdefault(k, v)


def tracking_down(uri: str) -> str | None:
    """What failed first when ``uri`` went down in this process (None: tracking is not degraded)."""
    with _STATE:
        return _DOWN.get(uri)


def reset_outage(uri: str | None = None) -> None:
    """Leave degraded mode (for ``uri``, or every URI): a successful relog proved the server is back."""
    with _STATE:
        if uri is None:
            _DOWN.clear()
        else:
            _DOWN.pop(uri, None)


class _MlflowRetryNoise(logging.Filter):
    """urllib3 logs a WARNING per retry of a refused MLflow request; our one warning says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Retrying") and any("/api/2.0/mlflow" in str(a) or "mlflow-artifacts" in str(a)
                                                       for a in (record.args or ())))


def _install_hooks() -> None:
    with _STATE:
        if _HOOKS:
            return
        _HOOKS.append(True)
        logging.getLogger("urllib3.connectionpool").addFilter(_MlflowRetryNoise())
        atexit.register(flush_journals)


def flush_journals() -> None:
    """Write every journal's buffered lines (at exit; a run's end flushes its own)."""
    with _STATE:
        journals = list(_JOURNALS.values())
    for j in journals:
        j.flush()


def _scrub(obj: Any) -> Any:
    """Every string in a journal line goes through ``redact_text`` (URL credentials, secret env values)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return obj


def _store(root: str):
    from infra.catalog.store import Store

    return Store(root)


def journal_folder(store, run_id: str) -> str:
    return store.path(PENDING_DIR, run_id)


def _segment_name(tag: str, seq: int) -> str:
    return f"{time.time_ns():020d}-{tag}-{seq:06d}.jsonl"


class Journal:
    """The tracking calls one rlt run could not make, durable in the data root.

    ``<root>/_tracking/pending/<rlt run id>/`` holds JSON Lines segments (one op per line: header, start, params,
    metrics, tags, text, artifact, inputs, end; relog adds mapped) and ``files/`` (copies of artifacts to log: the
    originals are often temporary). Segments are whole files written atomically through the store (local:
    temp + fsync + rename; S3: one PUT), so the same code works for a local and an s3:// root, where nothing can
    be appended to. Run starts/ends, params, tags and artifacts are written at once; metric and text lines are
    batched (<= 500 lines or 5 s, and at each run end and at exit).
    """

    def __init__(self, root: str, run_id: str, header: dict):
        self.root, self.run_id = root, run_id
        self._store = None
        self._lines: list[str] = []
        self._seq = 0
        self._tag = f"{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._warned = False
        self.counts: Counter = Counter()
        self.add({"op": "header", **header})

    @property
    def store(self):
        if self._store is None:
            self._store = _store(self.root)
        return self._store

    @property
    def folder(self) -> str:
        return journal_folder(self.store, self.run_id)

    def add(self, op: dict) -> None:
        line = json.dumps(_scrub(op), separators=(",", ":"), default=str)
        with self._lock:
            self._lines.append(line)
            _count(self.counts, op)
            if op["op"] in _FLUSH_OPS or len(self._lines) >= _FLUSH_LINES or time.monotonic() - self._last > _FLUSH_S:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        path = f"{self.folder}/{_segment_name(self._tag, self._seq)}"
        try:
            self.store.write_bytes(path, ("\n".join(self._lines) + "\n").encode())
        except Exception as exc:   # kept in memory; the next flush tries again. Never fails the data work.
            if not self._warned:
                self._warned = True
                log.error("cannot write the tracking journal %s (%s); pending tracking stays in memory and is lost "
                          "if this process dies", redact_text(path), redact_text(str(exc))[:300])
            return
        self._seq += 1
        self._lines.clear()
        self._last = time.monotonic()

    def keep_file(self, local_path: str) -> str:
        """Copy an artifact file into the journal; returns its name under ``files/``."""
        name = f"{uuid.uuid4().hex[:8]}-{os.path.basename(local_path)}"
        self.store.put_file(local_path, f"{self.folder}/files/{name}", keep=True)
        return name


def _count(c: Counter, op: dict) -> None:
    kind = op["op"]
    if kind == "start":
        c["runs"] += 1
    elif kind == "params":
        c["params"] += len(op["params"])
    elif kind == "metrics":
        c["metrics"] += len(op["metrics"])
    elif kind == "tags":
        c["tags"] += len(op["tags"])
    elif kind in ("artifact", "text"):
        c["artifacts"] += 1
    elif kind == "end":
        c["ends"] += 1
    elif kind == "inputs":
        c["datasets"] += len(op["datasets"])


class Tracker:
    """Thin wrapper over MlflowClient; ``enabled=False`` makes every call a no-op (unit tests).

    No method raises on a tracking failure: see the module docstring (degraded mode, the journal).
    ``run_id`` is the rlt run this tracker records (names its journal)."""

    def __init__(self, root: str, uri: str | None = None, experiment: str = EXPERIMENT, enabled: bool = True,
                 run_id: str = ""):
        self.enabled = enabled
        self.uri = uri or default_tracking_uri(root)
        self._client = None
        self._experiment_id: str | None = None
        self._root = root
        self._experiment = experiment
        self.run_id = run_id or f"adhoc-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            bound_http_retries()
            _install_hooks()
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
            # no mlflow.set_tracking_uri(): it exports MLFLOW_TRACKING_URI into os.environ, so every later Tracker
            # of this process (another data root, a relog's --tracking-uri) would silently track there
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
        from infra.catalog.locks import file_mutex

        return file_mutex(self.uri.removeprefix("sqlite:///") + ".init.lock") if self.uri.startswith("sqlite:") \
            else contextlib.nullcontext()

    # ------------------------------------------------------------------ degraded mode
    def _call(self, what: str, runs: tuple[str | None, ...], fn: Callable[[], Any],
              op: dict | Callable[[], dict]) -> Any:
        """``fn()`` against MLflow; when tracking is (or now goes) down, journal ``op`` instead and return None."""
        if not any(is_local(r) for r in runs) and tracking_down(self.uri) is None:
            try:
                return fn()
            except Exception as exc:   # connection refused, timeouts, 5xx, a broken store: never the data's fault
                self._degrade(what, exc)
        try:
            self.journal().add(op() if callable(op) else op)
        except Exception as exc:   # the journal is best effort too: the data work goes on
            log.error("could not journal MLflow %s for run %s: %s", what, self.run_id, redact_text(str(exc))[:300])
        return None

    def _degrade(self, what: str, exc: Exception) -> None:
        reason = f"{what} failed: {type(exc).__name__}: {' '.join(redact_text(str(exc)).split())[:400]}"
        with _STATE:
            first = self.uri not in _DOWN
            _DOWN.setdefault(self.uri, reason)
        if first:
            log.warning("MLflow tracking at %s is unavailable (%s). Tracking is degraded for the rest of this "
                        "process: the data work continues and commits; the tracking calls are kept in "
                        "%s/%s/<run id>/ (`rlt tracking status`; `rlt tracking relog` once MLflow is back)",
                        redact_text(self.uri), reason, redact_text(self._root), PENDING_DIR)

    def journal(self) -> Journal:
        key = (self._root, self.run_id)
        with _STATE:
            j = _JOURNALS.get(key)
            if j is None:
                _install_hooks()
                j = _JOURNALS[key] = Journal(self._root, self.run_id, {
                    "rlt_run_id": self.run_id, "uri": redact_text(self.uri), "experiment": self._experiment,
                    "reason": _DOWN.get(self.uri, ""), "ts": _now_ms(), "host": os.uname().nodename})
            return j

    def _open_journal(self) -> Journal | None:
        with _STATE:
            return _JOURNALS.get((self._root, self.run_id))

    def pending(self) -> dict[str, int]:
        """What this run's tracking is missing so far (empty: nothing)."""
        j = self._open_journal()
        return {k: v for k, v in j.counts.items() if v} if j is not None else {}

    @property
    def incomplete(self) -> bool:
        return bool(self.pending())

    def tracking_state(self) -> str:
        """``off`` (tracking disabled), ``incomplete`` (some calls are in the journal) or ``complete``."""
        return "off" if not self.enabled else ("incomplete" if self.incomplete else "complete")

    def journal_path(self) -> str:
        j = self._open_journal()
        return j.folder if j is not None else ""

    def flush(self) -> None:
        j = self._open_journal()
        if j is not None:
            j.flush()

    # ------------------------------------------------------------------ calls
    def start_run(self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        if not self.enabled:
            return ""
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        local, ts = LOCAL_PREFIX + uuid.uuid4().hex, _now_ms()
        rid = self._call("start_run", (parent_run_id,),
                         lambda: self.client.create_run(self._experiment_id, start_time=ts, run_name=name,
                                                        tags=tags).info.run_id,
                         {"op": "start", "run": local, "name": name, "parent": parent_run_id or "", "tags": tags,
                          "ts": ts})
        return rid or local

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        if self.enabled and run_id:
            ts = _now_ms()
            self._call("end_run", (run_id,), lambda: self.client.set_terminated(run_id, status=status, end_time=ts),
                       {"op": "end", "run": run_id, "status": status, "ts": ts})
            self.flush()

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        if not (self.enabled and run_id):
            return
        flat = {k[:250]: v for k, v in sorted(flatten(redact(dict(params))).items())}

        def send():
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])

        self._call("log_params", (run_id,), send, {"op": "params", "run": run_id, "params": flat})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        if not (self.enabled and run_id):
            return
        ts = _now_ms()
        rows = [[k, float(v), ts, int(step)] for k, v in metrics.items() if v is not None]

        def send():
            from mlflow.entities import Metric

            items = [Metric(*r) for r in rows]
            for i in range(0, len(items), 500):
                self.client.log_batch(run_id, metrics=items[i:i + 500])

        self._call("log_metrics", (run_id,), send, {"op": "metrics", "run": run_id, "metrics": rows})

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if not (self.enabled and run_id):
            return
        tags = {k: str(v) for k, v in tags.items()}

        def send():
            for k, v in tags.items():
                self.client.set_tag(run_id, k, v)

        self._call("set_tag", (run_id,), send, {"op": "tags", "run": run_id, "tags": tags})

    def log_text(self, run_id: str, text: str, path: str) -> None:
        if self.enabled and run_id:
            self._call("log_text", (run_id,), lambda: self.client.log_text(run_id, text, path),
                       {"op": "text", "run": run_id, "path": path, "text": text})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled and run_id:
            self._call("log_artifact", (run_id,),
                       lambda: self.client.log_artifact(run_id, local_path, artifact_path),
                       lambda: {"op": "artifact", "run": run_id, "file": self.journal().keep_file(local_path),
                                "name": os.path.basename(local_path), "artifact_path": artifact_path or ""})

    def log_datasets(self, run_id: str, datasets: Sequence[Mapping[str, str]]) -> None:
        """A stage run's input and output artifacts as MLflow datasets (the run table's Datasets column): each
        ``{"name": artifact name, "digest": artifact key, "source": artifact URI, "context": "input"|"output"}``.
        MLflow keeps digests of at most 36 characters (artifact keys have 20)."""
        if not (self.enabled and run_id and datasets):
            return
        rows = [{"name": str(d["name"])[:500], "digest": str(d["digest"])[:36], "source": redact_text(str(d["source"])),
                 "context": str(d.get("context") or "input")} for d in datasets]
        self._call("log_inputs", (run_id,), lambda: self.client.log_inputs(run_id, datasets=dataset_inputs(rows)),
                   {"op": "inputs", "run": run_id, "datasets": rows})

    def metric_logger(self, run_id: str) -> Callable[[str, float, int], None]:
        """A ``log_metric(name, value, step)`` callable for injection into rlt_core."""
        def log_metric(name: str, value: float, step: int = 0) -> None:
            self.log_metrics(run_id, {name: value}, step)
        return log_metric

    def text_logger(self, run_id: str) -> Callable[[str, str, int], None]:
        def log_text(name: str, text: str, step: int = 0) -> None:
            self.log_text(run_id, text, f"samples/{name}-step{step:05d}.txt")
        return log_text

    def ui_hint(self) -> str:
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return redact_text(self.uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


def dataset_inputs(rows: list[Mapping[str, str]]) -> list:
    """MLflow ``DatasetInput`` entities for ``log_inputs``: metadata-only datasets (``MetaDataset``) whose source is
    the artifact URI (a local or an S3 artifact source, as MLflow resolves it), tagged with their context."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    out = []
    for r in rows:
        with warnings.catch_warnings():   # "can be interpreted in multiple ways": a local path is a local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(r["source"])
        ds = MetaDataset(source, name=r["name"], digest=r["digest"])
        out.append(DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, r["context"])]))
    return out


# ---------------------------------------------------------------------------------------------- relog
class TrackingError(RuntimeError):
    """Pending tracking cannot be read or replayed (no journal, MLflow still unreachable, a broken journal)."""


@dataclass
class JournalContents:
    run_id: str
    folder: str
    segments: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    ops: list[dict] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)   # local run id -> MLflow run id (set by relog)


def pending_run_ids(store) -> list[str]:
    """rlt runs with a tracking journal in this data root."""
    base = store.path(PENDING_DIR)
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.ls(base)
                  if any(s.endswith(".jsonl") for s in store.ls(p) if s != p))


def read_journal(store, run_id: str) -> JournalContents:
    folder = journal_folder(store, run_id)
    segments = sorted((p for p in store.ls(folder) if p.endswith(".jsonl")), key=lambda p: p.rsplit("/", 1)[-1])
    if not segments:
        raise TrackingError(f"no pending tracking for run {run_id!r} in {store.root}")
    out = JournalContents(run_id, folder, segments)
    for path in segments:
        for n, line in enumerate(store.read_bytes(path).decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                op = json.loads(line)
            except ValueError:
                raise TrackingError(f"{path} line {n}: not JSON (a torn write?); fix or remove that line") from None
            if op["op"] == "header":
                out.header = out.header or op
            elif op["op"] == "mapped":
                out.mapping[op["run"]] = op["mlflow"]
            else:
                out.ops.append(op)
    return out


def summarize(store, run_id: str) -> dict:
    """What an rlt run's tracking is missing: MLflow runs to create or complete, with their params, metrics,
    tags, artifacts and terminal statuses."""
    j = read_journal(store, run_id)
    runs: dict[str, dict] = {}

    def entry(rid: str) -> dict:
        if rid not in runs:
            runs[rid] = {"run": rid, "name": "", "mlflow_run_id": j.mapping.get(rid, "" if is_local(rid) else rid),
                         "create": is_local(rid), "params": 0, "metrics": 0, "tags": 0, "artifacts": 0, "datasets": 0,
                         "end": ""}
        return runs[rid]

    totals: Counter = Counter()
    for op in j.ops:
        _count(totals, op)
        e = entry(op["run"])
        if op["op"] == "start":
            e["name"] = op["name"]
        elif op["op"] == "params":
            e["params"] += len(op["params"])
        elif op["op"] == "metrics":
            e["metrics"] += len(op["metrics"])
        elif op["op"] == "tags":
            e["tags"] += len(op["tags"])
        elif op["op"] in ("artifact", "text"):
            e["artifacts"] += 1
        elif op["op"] == "end":
            e["end"] = op["status"]
        elif op["op"] == "inputs":
            e["datasets"] += len(op["datasets"])
    create = [r for r in runs.values() if r["create"]]
    return {"run_id": run_id, "journal": j.folder, "uri": j.header.get("uri", ""),
            "reason": j.header.get("reason", ""),
            "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.header.get("ts", 0) / 1000)),
            "runs_to_create": len(create), "runs_created_by_relog": sum(1 for r in create if r["mlflow_run_id"]),
            "runs_to_complete": len(runs) - len(create),
            **{k: totals.get(k, 0) for k in ("params", "metrics", "tags", "artifacts", "datasets", "ends")},
            "runs": list(runs.values())}


def relog(store, run_id: str, uri: str | None = None) -> dict:
    """Replay an rlt run's journal into MLflow: create its runs with their original names, tags, parent links
    and start times, log params, metrics (original steps and timestamps), tags, texts and artifacts, set the
    terminal statuses (original end times); then clear the journal entries replayed.

    Idempotent: each run created is recorded in the journal (``mapped``) before anything is logged to it, so a
    relog interrupted half-way and run again creates no run twice; params, tags, artifacts and end statuses are
    idempotent in MLflow, and a metric already stored (same key, value, step, timestamp) is not stored twice.
    Raises ``TrackingError`` (MLflow unreachable, a replay refused); what was replayed stays recorded."""
    j = read_journal(store, run_id)
    tr = Tracker(store.root, uri=uri, experiment=j.header.get("experiment") or EXPERIMENT, run_id=run_id)
    t0 = time.time()
    try:
        client = tr.client
    except Exception as exc:
        raise TrackingError(f"MLflow at {redact_text(tr.uri)} is still unreachable: {type(exc).__name__}: "
                            f"{' '.join(redact_text(str(exc)).split())[:300]}") from None
    from mlflow.entities import Metric, Param, RunTag

    mapping, done = dict(j.mapping), Counter()
    metrics: dict[str, list] = {}

    def mlflow_id(rid: str) -> str:
        if is_local(rid):
            if rid not in mapping:
                raise TrackingError(f"journal {j.folder}: run {rid} is used before its start (a broken journal)")
            return mapping[rid]
        return rid

    def send_metrics() -> None:
        for rid, rows in metrics.items():
            for i in range(0, len(rows), 1000):
                client.log_batch(rid, metrics=[Metric(*r) for r in rows[i:i + 1000]])
            done["metrics"] += len(rows)
        metrics.clear()

    seq = 0
    try:
        with tempfile.TemporaryDirectory(prefix="rlt-relog-") as tmp:
            for op in j.ops:
                kind = op["op"]
                if kind == "start":
                    if op["run"] in mapping:
                        continue
                    tags = dict(op["tags"])
                    if op.get("parent"):
                        tags["mlflow.parentRunId"] = mlflow_id(op["parent"])
                    rid = client.create_run(tr._experiment_id, start_time=op["ts"], tags=tags,
                                            run_name=op["name"]).info.run_id
                    mapping[op["run"]] = rid
                    # durable before anything is logged to it: a rerun after a failure creates no second run
                    store.write_bytes(f"{j.folder}/{_segment_name('relog', seq)}",
                                      (json.dumps({"op": "mapped", "run": op["run"], "mlflow": rid}) + "\n").encode())
                    seq += 1
                    done["runs"] += 1
                    continue
                rid = mlflow_id(op["run"])
                if kind == "params":
                    params = [Param(k, v) for k, v in op["params"].items()]
                    done["params"] += _log_batched(client, rid, "params", params)
                elif kind == "metrics":
                    metrics.setdefault(rid, []).extend(op["metrics"])
                    if len(metrics[rid]) >= 1000:
                        send_metrics()
                elif kind == "tags":
                    done["tags"] += _log_batched(client, rid, "tags", [RunTag(k, v) for k, v in op["tags"].items()])
                elif kind == "text":
                    client.log_text(rid, op["text"], op["path"])
                    done["artifacts"] += 1
                elif kind == "artifact":
                    sub = os.path.join(tmp, uuid.uuid4().hex[:8])
                    os.makedirs(sub)
                    local = os.path.join(sub, op["name"])
                    with open(local, "wb") as f:
                        f.write(store.read_bytes(f"{j.folder}/files/{op['file']}"))
                    client.log_artifact(rid, local, op.get("artifact_path") or None)
                    done["artifacts"] += 1
                elif kind == "inputs":
                    client.log_inputs(rid, datasets=dataset_inputs(op["datasets"]))
                    done["datasets"] += len(op["datasets"])
                elif kind == "end":
                    send_metrics()
                    client.set_terminated(rid, status=op["status"], end_time=op["ts"])
                    done["ends"] += 1
            send_metrics()
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"relog of {run_id} to MLflow at {redact_text(tr.uri)} stopped after "
                            f"{dict(done)}: {type(exc).__name__}: {' '.join(redact_text(str(exc)).split())[:300]}; "
                            "the runs it created are recorded in the journal, run relog again") from None
    _clear(store, j)
    reset_outage(tr.uri)
    return {"run_id": run_id, "uri": redact_text(tr.uri), "mapping": mapping, "replayed": dict(done),
            "seconds": round(time.time() - t0, 2)}


def _log_batched(client, rid: str, field: str, items: list) -> int:
    """``log_batch`` in chunks of 100 (the server's limit per request); returns how many were logged."""
    for i in range(0, len(items), 100):
        client.log_batch(rid, **{field: items[i:i + 100]})
    return len(items)


def _clear(store, j: JournalContents) -> None:
    """Remove what was replayed. Segments written meanwhile (a run still journaling) stay, and so does the
    mapping of the runs this relog created (they may be referred to by those later segments)."""
    names = {p.rsplit("/", 1)[-1] for p in j.segments}
    later = [p for p in store.ls(j.folder) if p.endswith(".jsonl") and p.rsplit("/", 1)[-1] not in names
             and "-relog-" not in p.rsplit("/", 1)[-1]]
    if not later:
        store.rm(j.folder, recursive=True)
        return
    for p in j.segments:
        if "-relog-" not in p.rsplit("/", 1)[-1]:
            store.rm(p)
    for op in j.ops:
        if op["op"] == "artifact":
            store.rm(f"{j.folder}/files/{op['file']}")

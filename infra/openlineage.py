"""OpenLineage run events for stage runs (the only module that imports the OpenLineage client).

Off unless asked for: with no OpenLineage configuration nothing is constructed and no event is built. On when
``OPENLINEAGE_URL`` is set (HTTP to a Marquez-style endpoint, ``OPENLINEAGE_API_KEY`` / ``OPENLINEAGE_ENDPOINT``
as the client reads them), when ``OPENLINEAGE_CONFIG`` names an ``openlineage.yml``, when the client would find
one (``./openlineage.yml``, ``~/.openlineage/openlineage.yml``), when ``OPENLINEAGE__TRANSPORT__*`` variables
configure a transport, or when ``RLT_OPENLINEAGE_FILE=<path>`` asks for the file transport (one JSON event per
line appended to that file; with a client configuration too, events go to both). ``OPENLINEAGE_DISABLED=true``
turns everything off, as the client defines it.

What is emitted (built by infra/engine/lineage_events.py from the stage declaration): per stage run that computes, a
START, then COMPLETE (inputs and outputs as datasets) or FAIL (the error, redacted) or ABORT (another run
committed the key first). Job: namespace ``OPENLINEAGE_NAMESPACE`` (default ``rlt-factory``), name
``<recipe or flow>.<stage>[label]``. Run id: a UUID derived from (rlt run id, stage, artifact key); the parent
run facet names the flow run (UUID5 of the rlt run id, job = the flow name). Datasets: namespace = the data root
URI (``file:///...`` or ``s3://bucket/prefix``), name = ``<artifact name>/<artifact key>``.

Never fails a stage: an emission error logs one warning and turns that sink off for the rest of the process
(like infra/tracking.py's degraded mode; lineage events are not journaled). HTTP transports the operator did not
give retry settings get bounded ones (a dead endpoint costs seconds once, not a minute per event); the client's
timeout (5 s unless configured) applies per request. Every string in an event passes through
``infra.settings.redact_text`` (URL credentials, secret environment values) just before it is sent, and the
client's own git-remote facet is replaced by ours (its URL redacted).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from infra.settings import is_secret_name, redact, redact_text

log = logging.getLogger(__name__)

ENV_FILE = "RLT_OPENLINEAGE_FILE"
ENV_NAMESPACE = "OPENLINEAGE_NAMESPACE"
DEFAULT_NAMESPACE = "rlt-factory"
INTEGRATION = "rlt-factory"
PRODUCER = "https://github.com/rlt-factory/rlt-factory"
RLT_FACET_SCHEMA = "https://github.com/rlt-factory/rlt-factory/blob/main/infra/openlineage.py"
# urllib3 Retry for HTTP transports without an operator retry config (the client's default is 5 retries)
BOUNDED_RETRY = {"total": 2, "read": 1, "connect": 2, "backoff_factor": 0.5,
                 "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["HEAD", "POST"]}
_UUID_NS = uuid.UUID("6f1d8a3e-2b0c-5d7e-9a41-3c2f1e0b7d55")   # rlt-factory's namespace for derived UUIDs

_STATE = threading.Lock()
_DOWN: dict[str, str] = {}        # sink description -> first failure (process-wide)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Where events go, read from the environment once per run context."""

    namespace: str = DEFAULT_NAMESPACE
    client_config: str = ""     # what configures the OpenLineage client ("" = nothing)
    file: str = ""              # RLT_OPENLINEAGE_FILE
    disabled: bool = False      # OPENLINEAGE_DISABLED=true

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(namespace=os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE, client_config=client_configured(),
                   file=os.environ.get(ENV_FILE, "").strip(),
                   disabled=os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true")

    @property
    def enabled(self) -> bool:
        return not self.disabled and bool(self.client_config or self.file)


def client_configured() -> str:
    """What would configure the OpenLineage client here, in its own order of lookup ("" when nothing does)."""
    if os.environ.get("OPENLINEAGE_CONFIG"):
        return f"OPENLINEAGE_CONFIG={os.environ['OPENLINEAGE_CONFIG']}"
    for path in (os.path.join(os.getcwd(), "openlineage.yml"),
                 os.path.join(os.path.expanduser("~/.openlineage"), "openlineage.yml")):
        if os.path.isfile(path):
            return path
    if any(k.startswith("OPENLINEAGE__TRANSPORT__") for k in os.environ) and not _only_url_aliases():
        return "OPENLINEAGE__TRANSPORT__* variables"
    if os.environ.get("OPENLINEAGE_URL"):
        return f"OPENLINEAGE_URL={redact_text(os.environ['OPENLINEAGE_URL'])}"
    return ""


def _only_url_aliases() -> bool:
    """The client copies OPENLINEAGE_URL into OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__* variables of this
    process: those alone are not a configuration of their own."""
    return all(k.startswith("OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__")
               for k in os.environ if k.startswith("OPENLINEAGE__TRANSPORT__"))


# ---------------------------------------------------------------------------------------------- what to emit
@dataclass
class DatasetInfo:
    """One artifact as an OpenLineage dataset (plain data: built by the tasks layer)."""

    name: str                   # artifact kind
    key: str
    uri: str
    schema: Any = None          # pyarrow schema of a tabular artifact
    num_rows: int | None = None
    size: int | None = None     # bytes, when cheap to know
    file_count: int | None = None
    quality: dict[str, Any] = field(default_factory=dict)   # data-quality figures (quarantine, filter yield)
    meta: dict[str, Any] = field(default_factory=dict)      # stage, stage version, producer, config hash, digest...


@dataclass
class StageInfo:
    """One stage run of one rlt run."""

    run_id: str                 # the rlt run id
    flow: str                   # the flow name (parent job)
    job: str                    # "<recipe or flow>.<stage>[label]"
    stage: str
    key: str
    facts: dict[str, Any] = field(default_factory=dict)     # stage version, label, config hash, models, mlflow run


def stage_run_uuid(run_id: str, stage: str, key: str) -> str:
    return str(uuid.uuid5(_UUID_NS, f"stage:{run_id}:{stage}:{key}"))


def flow_run_uuid(run_id: str) -> str:
    return str(uuid.uuid5(_UUID_NS, f"flow:{run_id}"))


def store_namespace(root: str) -> str:
    """The data root as a dataset namespace: ``file:///abs/path`` or ``s3://bucket/prefix`` (no credentials)."""
    root = redact(root.rstrip("/"))
    return root if "://" in root else "file://" + os.path.abspath(root)


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The checkout's git remote (redacted) and commit, else the installed package version."""
    out = {"version": "", "url": ""}
    try:
        from openlineage.client.git import _find_git_dir, get_git_repo_url, get_git_version

        git_dir = _find_git_dir(os.path.dirname(os.path.abspath(__file__)))
        if git_dir is not None:
            out["version"] = get_git_version(git_dir) or ""
            out["url"] = redact_text(get_git_repo_url(git_dir=git_dir) or "")
    except Exception:   # no git: the package version below
        pass
    if not out["version"]:
        try:
            from importlib.metadata import version

            out["version"] = version("rlt-factory")
        except Exception:
            pass
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("rlt-factory")
    except Exception:
        return "0"


# ---------------------------------------------------------------------------------------------- emitter
class Emitter:
    """Builds and sends a stage run's events. ``enabled`` is False without configuration: then every method
    returns at once and the OpenLineage client is never imported."""

    def __init__(self, root: str, settings: Settings | None = None):
        self.root = root
        self.settings = settings or Settings.from_env()
        self._sinks: list[tuple[str, Any]] | None = None
        self._lock = threading.Lock()
        self._send = threading.Lock()   # stages run in threads: one event at a time per emitter (file appends)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def dataset_namespace(self) -> str:
        return store_namespace(self.root)

    # -- public: never raise
    def start(self, info: StageInfo, inputs: list[DatasetInfo]) -> None:
        self._emit("START", info, inputs, [])

    def complete(self, info: StageInfo, inputs: list[DatasetInfo], outputs: list[DatasetInfo]) -> None:
        self._emit("COMPLETE", info, inputs, outputs)

    def fail(self, info: StageInfo, inputs: list[DatasetInfo], error: str) -> None:
        self._emit("FAIL", info, inputs, [], error=error)

    def abort(self, info: StageInfo, inputs: list[DatasetInfo], why: str) -> None:
        self._emit("ABORT", info, inputs, [], error=why)

    def close(self) -> None:
        for _, client in self._sinks or []:
            try:
                client.close(1.0)
            except Exception:
                pass

    # -- internals
    def _emit(self, state: str, info: StageInfo, inputs: list[DatasetInfo], outputs: list[DatasetInfo],
              error: str = "") -> None:
        if not self.enabled:
            return
        try:
            sinks = self.sinks()
            live = [(d, c) for d, c in sinks if _down(d) is None]
            if not live:
                return
            event = self.event(state, info, inputs, outputs, error)
        except Exception as exc:   # a bug or a broken configuration: lineage never fails the data work
            _warn_once("setup", f"OpenLineage events are off for this process: cannot build the {state} event of "
                                f"{info.job}: {type(exc).__name__}: {redact_text(str(exc))[:300]}")
            return
        for desc, client in live:
            try:
                with self._send:
                    client.emit(event)
            except Exception as exc:
                _degrade(desc, f"{state} of {info.job}: {type(exc).__name__}: "
                               f"{' '.join(redact_text(str(exc)).split())[:300]}")

    def sinks(self) -> list[tuple[str, Any]]:
        """(description, OpenLineageClient) per destination, built once."""
        with self._lock:
            if self._sinks is None:
                self._sinks = _build_sinks(self.settings)
            return self._sinks

    def event(self, state: str, info: StageInfo, inputs: list[DatasetInfo], outputs: list[DatasetInfo],
              error: str = ""):
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState

        run = Run(runId=stage_run_uuid(info.run_id, info.stage, info.key), facets=self._run_facets(info, error, state))
        job = Job(namespace=self.namespace, name=info.job, facets=self._job_facets())
        ins = [InputDataset(namespace=self.dataset_namespace, name=f"{d.name}/{d.key}", facets=self._dataset_facets(d),
                            inputFacets=_input_facets(d)) for d in inputs]
        outs = [OutputDataset(namespace=self.dataset_namespace, name=f"{d.name}/{d.key}",
                              facets=self._dataset_facets(d), outputFacets=_output_facets(d)) for d in outputs]
        return RunEvent(eventType=getattr(RunState, state), eventTime=datetime.now(timezone.utc).isoformat(),
                        run=run, job=job, inputs=ins, outputs=outs, producer=PRODUCER)

    def _run_facets(self, info: StageInfo, error: str, state: str) -> dict:
        from openlineage.client import constants
        from openlineage.client.facet_v2 import error_message_run, parent_run, processing_engine_run

        parent = flow_run_uuid(info.run_id)
        facets: dict[str, Any] = {
            "parent": parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent), job=parent_run.Job(namespace=self.namespace, name=info.flow),
                root=parent_run.Root(run=parent_run.RootRun(runId=parent),
                                     job=parent_run.RootJob(namespace=self.namespace, name=info.flow))),
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=_package_version(), name=INTEGRATION, openlineageAdapterVersion=constants.__version__),
            "rlt": _custom("RltStageRunFacet", {"rlt_run_id": info.run_id, "stage": info.stage,
                                                       "artifact_key": info.key, **info.facts}),
        }
        if error and state == "FAIL":
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=redact_text(error)[:4000],
                                                                           programmingLanguage="python")
        elif error:
            facets["rlt_abort"] = _custom("RltAbortRunFacet", {"reason": redact_text(error)[:1000]})
        return facets

    def _job_facets(self) -> dict:
        from openlineage.client.facet_v2 import job_type_job, source_code_location_job

        facets: dict[str, Any] = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH",
                                                                          integration=INTEGRATION, jobType="TASK")}
        code = code_version()
        if code["url"]:
            facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
                type="git", url=code["url"], repoUrl=code["url"], version=code["version"] or None)
        return facets

    def _dataset_facets(self, d: DatasetInfo) -> dict:
        from openlineage.client.facet_v2 import dataset_version_dataset, schema_dataset

        facets: dict[str, Any] = {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=d.key),
                                  "rlt": _custom("RltArtifactDatasetFacet",
                                                 {"artifact_key": d.key, "artifact": d.name, "uri": redact(d.uri),
                                                  **d.meta})}
        if d.schema is not None:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=[
                schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type), ordinal_position=i + 1)
                for i, f in enumerate(d.schema)])
        if d.quality:
            facets["rlt_dataQuality"] = _custom("RltDataQualityDatasetFacet", d.quality)
        return facets


def _input_facets(d: DatasetInfo) -> dict:
    from openlineage.client.facet_v2 import input_statistics_input_dataset as stats

    if d.num_rows is None:
        return {}
    return {"inputStatistics": stats.InputStatisticsInputDatasetFacet(rowCount=d.num_rows, size=d.size,
                                                                       fileCount=d.file_count)}


def _output_facets(d: DatasetInfo) -> dict:
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    return {"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(rowCount=d.num_rows, size=d.size,
                                                                         fileCount=d.file_count)}


def _custom(name: str, props: Mapping[str, Any]) -> dict:
    """A custom facet: the base facet fields plus its properties at the top level (the spec's shape), redacted and
    JSON-safe. A plain dict serialises as it is inside the client's attrs event."""
    body = json.loads(json.dumps(redact(dict(props)), default=str))
    return {"_producer": PRODUCER, "_schemaURL": f"{RLT_FACET_SCHEMA}#/$defs/{name}", **body}


# ---------------------------------------------------------------------------------------------- sinks
def _build_sinks(s: Settings) -> list[tuple[str, Any]]:
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.file import FileConfig, FileTransport

    # the client's git facet would carry .git/config's remote URL unredacted: ours replaces it
    user = {"facets": {"source_code_location": {"disabled": True}}}
    sinks: list[tuple[str, Any]] = []
    if s.client_config:
        client = OpenLineageClient(config=user)
        if client.transport.kind == "console" and not (client.config.transport or {}).get("type"):
            log.warning("OpenLineage: %s configures no transport; no events are sent there", s.client_config)
        else:
            _bound_http(client.transport)
            client.transport = _Redacting(client.transport)
            sinks.append((_describe(client.transport.inner, s.client_config), client))
    if s.file:
        if "://" not in s.file:
            os.makedirs(os.path.dirname(os.path.abspath(s.file)), exist_ok=True)
        client = OpenLineageClient(transport=_Redacting(FileTransport(FileConfig(log_file_path=s.file, append=True))),
                                   config=user)
        sinks.append((f"file {s.file}", client))
    for desc, _ in sinks:
        log.info("OpenLineage: stage run events go to %s (namespace %s)", desc, s.namespace)
    return sinks


def _children(transport) -> list:
    inner = getattr(transport, "transports", None)
    return list(inner) if isinstance(inner, list) else [transport]


def _bound_http(transport) -> None:
    from openlineage.client.transport.http import HttpTransport
    from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG

    for t in _children(transport):
        if isinstance(t, HttpTransport) and t.config.retry == DEFAULT_RETRY_CONFIG and t._session is None:
            t.config.retry = dict(BOUNDED_RETRY)


def _describe(transport, configured_by: str) -> str:
    parts = []
    for t in _children(transport):
        url = getattr(t, "url", "")
        parts.append(f"{t.kind} {redact_text(url)}".strip())
    return f"{', '.join(parts)} ({configured_by})"


class _Redacting:
    """Wraps a transport: every string of an event is redacted just before it is sent (whatever facets the client
    or the operator's configuration added), and values of secret-named environment-variable facets are masked."""

    def __init__(self, inner):
        self.inner = inner
        self.kind = inner.kind

    def emit(self, event):
        _scrub(event)
        return self.inner.emit(event)

    def close(self, timeout: float = -1.0) -> bool:
        return self.inner.close(timeout)

    def __getattr__(self, item):
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)


def _scrub(obj: Any) -> Any:
    """Redact every string inside ``obj`` in place (attrs objects, dicts, lists); returns the new value for
    immutable strings."""
    import attr

    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        secret = is_secret_name(str(obj.get("name", ""))) and "value" in obj
        for k, v in obj.items():
            obj[k] = "***" if secret and k == "value" else _scrub(v)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _scrub(v)
    elif attr.has(type(obj)):
        names = {f.name for f in attr.fields(type(obj))}
        secret = {"name", "value"} <= names and is_secret_name(str(getattr(obj, "name", "")))
        for name in names:
            v = getattr(obj, name)
            new = "***" if secret and name == "value" else _scrub(v)
            if new is not v:
                object.__setattr__(obj, name, new)
    return obj


def _down(desc: str) -> str | None:
    with _STATE:
        return _DOWN.get(desc)


def _degrade(desc: str, reason: str) -> None:
    with _STATE:
        first = desc not in _DOWN
        _DOWN.setdefault(desc, reason)
    if first:
        log.warning("OpenLineage: sending to %s failed (%s). No further events go there from this process; the "
                    "data work continues (the catalog holds the same lineage: `rlt lineage`)", desc, reason)


_WARNED: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    with _STATE:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning("%s", msg)


def reset() -> None:
    """Forget failed sinks and warnings (tests)."""
    with _STATE:
        _DOWN.clear()
        _WARNED.clear()

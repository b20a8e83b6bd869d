"""Human spot-checks on MLflow: a night's sample as traces in a review queue, and the reviewers' verdicts read back.

MLflow (3.14+) keeps the review workflow in its tracking store: *label schemas* (the questions a reviewer answers),
*review queues* (named bundles of traces with the schemas they ask), and *assessments* (the answers, written as
``Feedback`` on a trace under the schema's name, by the UI's Review page or by ``mlflow.log_feedback``). A queue
item's status (pending / complete / declined) is the reviewer's explicit "done": writing an answer does not
advance it. This module is the only one that speaks to those APIs (flows/releases/review.py decides what to
sample and what a verdict means); like infra/tracking.py it takes its tracking URI explicitly.

The three questions (one experiment-wide schema each, created once):

- ``rlt_verdict``: pass / fail (a bool: True = pass);
- ``rlt_reason``: why it fails, one of ``REASONS``;
- ``rlt_comment``: free text.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from infra.tracking import EXPERIMENT, bound_http_retries, is_local

log = logging.getLogger(__name__)

VERDICT, REASON, COMMENT = "rlt_verdict", "rlt_reason", "rlt_comment"
REASONS = ("wrong_math", "copies_solution", "unclear", "off_topic", "formatting", "other")
INSTRUCTIONS = {
    VERDICT: "Would you keep this explanation in a training set? Fail it when it teaches wrongly or badly.",
    REASON: "For a fail: the main reason (wrong_math: a wrong step or result; copies_solution: restates the "
            "solution instead of explaining it; unclear; off_topic; formatting: broken tags or layout; other).",
    COMMENT: "Anything the next reviewer or the filter's author should know (optional).",
}
_GLOBAL_URI = threading.Lock()   # trace export follows MLflow's process-wide tracking URI: one exporter at a time


@dataclass(frozen=True)
class QueueItem:
    trace_id: str
    status: str                  # pending | complete | declined
    completed_by: str | None
    completed_ms: int | None


@dataclass(frozen=True)
class Verdict:
    """A trace's latest answer to each question (None where unanswered)."""

    trace_id: str
    verdict: bool | None
    reason: str | None
    comment: str | None
    reviewer: str | None
    reviewed_ms: int | None


class ReviewQueues:
    """The review side of one MLflow tracking server (or sqlite store): schemas, queues, traces, verdicts."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT):
        self.uri = uri
        self.experiment = experiment
        self._client = None
        self._tracing = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracing.client import TracingClient
            from mlflow.tracking import MlflowClient

            bound_http_retries()
            self._client, self._tracing = MlflowClient(tracking_uri=self.uri), TracingClient(tracking_uri=self.uri)
        return self._client

    @property
    def tracing(self):
        _ = self.client
        return self._tracing

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment)
                except MlflowException as exc:   # created meanwhile by a night's tracker
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    self._experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    # ------------------------------------------------------------------ schemas and queues
    def ensure_schemas(self) -> list[str]:
        """The three label schemas of the experiment (created when missing); their ids."""
        from mlflow.exceptions import MlflowException
        from mlflow.genai.label_schemas import InputCategorical, InputPassFail, InputText

        inputs = {VERDICT: InputPassFail(positive_label="Pass", negative_label="Fail"),
                  REASON: InputCategorical(options=list(REASONS)), COMMENT: InputText()}
        eid, ids = self.experiment_id(), []
        for name, spec in inputs.items():
            try:
                schema = self.tracing._create_label_schema(experiment_id=eid, name=name, type="feedback", input=spec,
                                                           instruction=INSTRUCTIONS[name], enable_comment=False)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                schema = self.tracing._get_label_schema_by_name(eid, name)
            ids.append(schema.schema_id)
        return ids

    def create_queue(self, name: str, schema_ids: Sequence[str]) -> str:
        """A custom queue asking ``schema_ids`` (the existing one of that name, if any); its id."""
        from mlflow.exceptions import MlflowException

        eid = self.experiment_id()
        try:
            queue = self.tracing._create_review_queue(eid, name=name, queue_type="custom", users=None,
                                                      schema_ids=list(schema_ids))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            queue = self.tracing._get_review_queue_by_name(eid, name)
        return queue.queue_id

    def queue(self, queue_id: str):
        return self.tracing._get_review_queue(queue_id)

    def add_items(self, queue_id: str, trace_ids: Sequence[str]) -> None:
        self.tracing._add_items_to_review_queue(queue_id, item_ids=list(trace_ids))

    def items(self, queue_id: str) -> list[QueueItem]:
        out: list[QueueItem] = []
        token = None
        while True:
            page = self.tracing._list_review_queue_items(queue_id, status=None, max_results=500, page_token=token)
            out.extend(QueueItem(i.item_id, str(i.status.value), i.completed_by, i.completed_time_ms) for i in page)
            token = page.token
            if not token:
                return out

    # ------------------------------------------------------------------ traces
    def log_traces(self, examples: Sequence[Mapping[str, Any]], mlflow_run_id: str | None = None) -> list[str]:
        """One trace per example (``name``, ``inputs``, ``outputs``, ``attributes``, ``tags``), linked to the
        night's MLflow run when it has one; their ids, in order. Written synchronously (flushed before return)."""
        eid = self.experiment_id()
        link = mlflow_run_id if mlflow_run_id and not is_local(mlflow_run_id) else None
        ids = []
        with _exporting_to(self.uri):
            for ex in examples:
                span = self.client.start_trace(ex["name"], span_type="CHAIN", inputs=dict(ex["inputs"]),
                                               attributes=dict(ex.get("attributes") or {}),
                                               tags=dict(ex.get("tags") or {}), experiment_id=eid, run_id=link)
                self.client.end_trace(span.trace_id, outputs=dict(ex["outputs"]))
                ids.append(span.trace_id)
        return ids

    def verdict(self, trace_id: str) -> Verdict:
        """The latest valid answer to each question on the trace (any source: the UI writes HUMAN feedback)."""
        info = self.tracing.get_trace_info(trace_id)
        latest: dict[str, Any] = {}
        for a in info.assessments or []:
            if a.name not in (VERDICT, REASON, COMMENT) or getattr(a, "valid", True) is False:
                continue
            if a.name not in latest or (a.last_update_time_ms or 0) >= (latest[a.name].last_update_time_ms or 0):
                latest[a.name] = a
        verdict = latest.get(VERDICT)
        who = next((a.source.source_id for a in (verdict, *latest.values()) if a is not None and a.source), None)
        return Verdict(trace_id, None if verdict is None else _as_bool(verdict.value),
                       _text(latest.get(REASON)), _text(latest.get(COMMENT)) or
                       (verdict.rationale if verdict is not None else None), who,
                       max((a.last_update_time_ms or 0 for a in latest.values()), default=None) or None)


def _text(a) -> str | None:
    if a is None or a.value is None:
        return None
    v = a.value[0] if isinstance(a.value, list) and a.value else a.value
    return str(v)


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("pass", "yes", "true", "fail", "no", "false"):
        return v.strip().lower() in ("pass", "yes", "true")
    return None


@contextlib.contextmanager
def _exporting_to(uri: str) -> Iterator[None]:
    """Point MLflow's trace exporter at ``uri`` for the block, then put back what was there (the process-wide
    tracking URI and the MLFLOW_TRACKING_URI variable, which mlflow.set_tracking_uri rewrites)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _GLOBAL_URI:
        old_uri, old_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        old_async = os.environ.get("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING")
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"   # each trace is stored when it ends
        try:
            mlflow.set_tracking_uri(uri)
            yield
        finally:
            mlflow.set_tracking_uri(old_uri)
            for name, value in (("MLFLOW_TRACKING_URI", old_env), ("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", old_async)):
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

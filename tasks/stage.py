"""A stage declared once: name, version, typed config, typed inputs and outputs, its key, and a pure body.

The body reads like the method; the plumbing it may touch is ``StageRun`` (inputs as row streams or local
model folders, one writer per output, metric logging, sharded execution). Everything else (key, the catalog as
the one truth of "done", locks, the MLflow run, the commit, provenance, stage records) is the runner's
(tasks/runner.py), and the plan computes keys with the same ``Stage.key_parts``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

from pydantic import BaseModel

from data_contracts import ArtifactRef, Contract
from infra.artifacts import ArtifactWriter, KeyParts, secondary_key
from infra.models import ModelSnapshot, resolve_model
from tasks.common import RunContext

log = logging.getLogger("rlt")

# Deterministic row order when a stage streams an input artifact (shards are cut from this order).
ORDER = {"problems": "problem_id", "quarantine": "source_row, reason", "explanations": "explanation_id",
         "scored_explanations": "explanation_id", "filter_decisions": "problem_id, rank, explanation_id",
         "distill_set": "example_id", "eval_results": "benchmark, item_id, sample_index"}

Input = Union[ArtifactRef, ModelSnapshot]


class AlreadyCommitted(Exception):
    """Another run committed this key while ours computed it (sharded stages share shards): reuse its artifact."""


@dataclass(frozen=True)
class Output:
    """One artifact a stage produces. ``provenance`` = (id column, kind, parent id column, parent kind)."""

    name: str
    contract: Contract | None = None
    provenance: tuple[str, str, str | None, str | None] | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    version: str
    config: type[BaseModel]
    inputs: tuple[str, ...]
    outputs: tuple[Output, ...]
    body: Callable[["StageRun"], Mapping[str, Any] | None]
    key_exclude: frozenset[str] = frozenset()   # config fields that change where/how fast, not what
    models: Callable[[Any], Mapping[str, str]] | None = None      # key role -> model reference in the config
    extra_key: Callable[[Any], Mapping[str, str]] | None = None   # more identity (e.g. a source file's digest)
    key_config: Callable[[Any], dict] | None = None   # the config's part of the key, when not all of it
    sharded: bool = False
    key_inputs: Callable[[Any], Sequence[str]] | None = None   # the inputs the output depends on (default: all)
    incremental: Any = None   # tasks.reuse.Incremental: rows an earlier artifact holds are copied, not recomputed

    def key_parts(self, cfg: BaseModel, inputs: Mapping[str, str | ModelSnapshot]) -> KeyParts:
        """The artifact key's parts. ``inputs``: role -> artifact key, or a model snapshot for model inputs."""
        missing = [r for r in self.inputs if r not in inputs]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; expected {list(self.inputs)}")
        conf = self.key_config(cfg) if self.key_config else cfg.model_dump(mode="json", exclude=set(self.key_exclude))
        models = {role: resolve_model(ref).digest for role, ref in (self.models(cfg) if self.models else {}).items()}
        models.update(self.extra_key(cfg) if self.extra_key else {})
        keys: dict[str, str] = {}
        for role in (self.key_inputs(cfg) if self.key_inputs else self.inputs):
            v = inputs[role]
            if isinstance(v, ModelSnapshot):
                keys[role], models[role] = f"model:{v.ref}", v.digest
            else:
                keys[role] = v.key if isinstance(v, ArtifactRef) else str(v)
        return KeyParts(self.name, self.version, conf, keys, models)

    def output_keys(self, primary: str) -> dict[str, str]:
        return {o.name: primary if i == 0 else secondary_key(primary, o.name) for i, o in enumerate(self.outputs)}

    @property
    def primary(self) -> str:
        return self.outputs[0].name


@dataclass
class StageRun:
    """What a stage body sees: its config, inputs, writers and loggers."""

    stage: Stage
    ctx: RunContext
    cfg: Any
    inputs: dict[str, Input]
    parts: KeyParts
    keys: dict[str, str]
    label: str = ""
    mlflow_run: str = ""
    writers: dict[str, ArtifactWriter] = field(default_factory=dict)
    commit_lease: Any = None   # the key's lock, held from the end of a sharded body's shards through the commit
    usage: dict[str, int] = field(default_factory=dict)   # tokens this run computed (tasks/costs.py)
    meter: Any = None   # tasks.costs.Meter: the runner measures the body's seconds and memory

    def __post_init__(self):
        for o in self.stage.outputs:
            self.writers[o.name] = ArtifactWriter(self.ctx.store, o.name, self.keys[o.name], self.parts,
                                                  self.ctx.run_id, o.contract, self.label)

    @property
    def key(self) -> str:
        return self.keys[self.stage.primary]

    @property
    def log(self):
        from tasks.common import logger

        return logger()

    def writer(self, name: str | None = None) -> ArtifactWriter:
        return self.writers[name or self.stage.primary]

    def hold_commit_lock(self) -> None:
        """Sharded stages, once every shard is done: take the key's lock and keep it through the body's last reads
        of the shard parts and the commit (the committing run deletes the staging parts it consolidated, so no one
        may read them unlocked). Raises ``AlreadyCommitted`` when another run committed the key meanwhile."""
        from infra.locks import acquire

        if self.commit_lease is None:
            self.commit_lease = acquire(self.ctx.locks, f"stage:{self.key}", self.ctx.owner(), poll_s=0.5)
        if len(self.ctx.catalog.artifacts(self.keys.values())) == len(self.keys):
            raise AlreadyCommitted(self.key)

    def ref(self, role: str) -> ArtifactRef:
        v = self.inputs[role]
        if not isinstance(v, ArtifactRef):
            raise TypeError(f"{self.stage.name}: input {role!r} is a model reference, not an artifact")
        return v

    def rows(self, role: str, columns: Sequence[str] | None = None, where: str = "",
             batch_size: int = 512) -> Iterator[dict]:
        """Stream an input artifact's rows in a fixed order (bounded memory)."""
        ref = self.ref(role)
        for batch in self.ctx.catalog.scan(ref.name, ref.key, columns, ORDER.get(ref.name), where, batch_size):
            yield from batch.to_pylist()

    def count(self, role: str, where: str = "") -> int:
        ref = self.ref(role)
        return self.ctx.catalog.count(ref.name, ref.key, where)

    def model(self, role: str) -> ModelSnapshot:
        """A local folder for a model input (a checkpoint artifact is fetched once and digest-verified)."""
        from tasks.models import checkpoint_snapshot

        v = self.inputs[role]
        return v if isinstance(v, ModelSnapshot) else checkpoint_snapshot(self.ctx, v)

    def work_dir(self, sub: str = "") -> str:
        """A local folder for training state keyed by the artifact key (a crashed run resumes from it)."""
        ctx = self.ctx
        base = ctx.store.root if ctx.store.local else os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory")
        return os.path.join(base, "_work", self.stage.name, self.key, sub)

    def count_tokens(self, **counts: int | None) -> None:
        """Add the tokens this run computed (``tokens_in``, ``tokens_out``, ``forward_tokens``; see
        tasks/costs.py) to its ``stage_costs`` record."""
        from tasks.costs import add_tokens

        add_tokens(self.usage, **counts)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.ctx.tracker.log_metrics(self.mlflow_run, metrics, step)

    def metric_logger(self):
        return self.ctx.tracker.metric_logger(self.mlflow_run)

    def text_logger(self):
        return self.ctx.tracker.text_logger(self.mlflow_run)

    def save_checkpoint(self, model_dir: str | None, row: dict, name: str | None = None) -> None:
        from tasks.checkpoints import store_checkpoint

        store_checkpoint(self, self.writer(name), model_dir, row)

"""A stage declared once: a typed function whose parameters are its inputs by artifact name.

    def generate(run: StageRun, cfg: GenerateConfig, problems: Artifact, teacher_checkpoint: Model) -> dict: ...

    STAGE = declare(generate, version="1", outputs=(explanations.CONTRACT,), sharded=True,
                    key_names={"teacher_checkpoint": "teacher"})

From the signature the engine knows the stage's name, its config type (``cfg``'s annotation) and its inputs: each
parameter after ``cfg`` takes the artifact of that name from the stage that produces it (the factory's graph is
derived from these declarations: flows/pipeline.py), as an :class:`Artifact` (rows streamed in the contract's
order) or a :class:`Model` (a checkpoint artifact, or a model reference, as a local folder). The outputs are
contracts (their id, order, provenance and layer come with them: data_contracts). The key is the config's own
(infra/engine/config.py), the input artifacts' keys and the models' digests. Everything else (the catalog as the
one truth of "done", locks, the MLflow run, the commit, provenance, stage records) is the runner's
(infra/engine/runner.py), and the plan computes keys with the same ``Stage.key_parts``.

``key_names`` keeps the name an input had in the key before inputs were named after their artifacts: renaming it
in the key would change every key and recompute every cached night, so the key keeps the old name.

An input annotated ``Optional[Artifact]`` / ``Optional[Model]`` may be absent (the body gets None): absent, it is
not in the key at all, so an input added that way leaves every key made without it as it was (train_teacher's
and score's ``reward_student``: the night's baseline student, bound only when the recipe asks for it).
"""
from __future__ import annotations

import inspect
import logging
import os
import typing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union, cast

from data_contracts import ArtifactRef, Contract
from infra.catalog.artifacts import ArtifactWriter, KeyParts, secondary_key
from infra.engine.config import StageConfig
from infra.engine.context import RunContext
from infra.models import ModelSnapshot, resolve_model

if TYPE_CHECKING:
    from infra.engine.shard_job import ShardResult
    from infra.engine.shards import ShardSummary

log = logging.getLogger("rlt")
WORK_DIR_ENV = "RLT_WORK_DIR"

Input = Union[ArtifactRef, ModelSnapshot]   # what the runner is given for an input: an artifact, or a model


class AlreadyCommitted(Exception):
    """Another run committed this key while ours computed it (sharded stages share shards): reuse its artifact."""


# ---------------------------------------------------------------------------------------------- input handles
class Artifact:
    """A tabular input artifact as a stage body sees it: its rows, streamed in the contract's order (shards are cut
    from that order), with bounded memory."""

    def __init__(self, ctx: RunContext, ref: ArtifactRef):
        self.ctx, self.ref = ctx, ref

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def num_rows(self) -> int:
        return self.ref.num_rows

    def rows(self, columns: Sequence[str] | None = None, where: str = "", batch_size: int = 512
             ) -> Iterator[dict[str, Any]]:
        from data_contracts import registry

        contract = registry().get(self.ref.name)
        order = contract.order_by if contract is not None else None
        for batch in self.ctx.catalog.scan(self.ref.name, self.ref.key, columns, order, where, batch_size):
            yield from batch.to_pylist()

    def count(self, where: str = "") -> int:
        return self.ctx.catalog.count(self.ref.name, self.ref.key, where)

    def distinct(self, column: str) -> list[Any]:
        """The distinct values of one column (small: a config value the rows were made with)."""
        return [r["v"] for r in self.ctx.catalog.rows(
            f'SELECT DISTINCT "{column}" AS v FROM lake.data.{self.ref.name} WHERE artifact_key = ? ORDER BY 1',
            [self.ref.key])]


class Model:
    """A model input: a checkpoint artifact (fetched once into a local folder and digest-verified) or a model
    reference (``builtin:...``, a folder, a hub id)."""

    def __init__(self, ctx: RunContext, value: Input):
        self.ctx, self.value = ctx, value
        self._snapshot: ModelSnapshot | None = value if isinstance(value, ModelSnapshot) else None

    @property
    def key(self) -> str | None:
        """The checkpoint artifact's key; None for a model reference."""
        return self.value.key if isinstance(self.value, ArtifactRef) else None

    @property
    def ref(self) -> str:
        """``artifact:<key>`` for a checkpoint, else the model reference."""
        return f"artifact:{self.key}" if self.key else cast(ModelSnapshot, self.value).ref   # no key: a snapshot

    @property
    def snapshot(self) -> ModelSnapshot:
        if self._snapshot is None:
            from infra.engine.models import checkpoint_snapshot

            # a snapshot was set in __init__; what remains is a checkpoint artifact
            self._snapshot = checkpoint_snapshot(self.ctx, cast(ArtifactRef, self.value))
        return self._snapshot

    @property
    def path(self) -> str:
        return self.snapshot.path

    @property
    def digest(self) -> str:
        return self.snapshot.digest


@dataclass(frozen=True)
class InputSpec:
    """One declared input: the parameter (= the artifact name it takes), its handle type and its name in the key."""

    name: str
    kind: type   # Artifact or Model
    key_name: str
    optional: bool = False   # annotated Optional[...]: may be absent (None), and is then not in the key


# ---------------------------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Stage:
    name: str
    version: str
    config: type[StageConfig]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[Contract, ...]
    body: Callable[..., Mapping[str, Any] | None]
    sharded: bool = False
    # infra.engine.reuse.Incremental: rows an earlier artifact holds are copied, not recomputed
    incremental: Any = None

    @property
    def primary(self) -> str:
        return self.outputs[0].name

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def key_name(self, input_name: str) -> str:
        return next(i.key_name for i in self.inputs if i.name == input_name)

    def key_parts(self, cfg: StageConfig, inputs: Mapping[str, str | Input]) -> KeyParts:
        """The artifact key's parts. ``inputs``: input name -> artifact key (or ref), or a model snapshot."""
        missing = [i.name for i in self.inputs if not i.optional and inputs.get(i.name) is None]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; expected {list(self.input_names)}")
        models = {role: resolve_model(ref).digest for role, ref in cfg.key_models().items()}
        models.update(cfg.key_extra())
        keys: dict[str, str] = {}
        by_key_name = {i.key_name: i.name for i in self.inputs if inputs.get(i.name) is not None}
        for key_name in cfg.key_inputs(tuple(by_key_name)):
            v = inputs[by_key_name[key_name]]
            if isinstance(v, ModelSnapshot):
                keys[key_name], models[key_name] = f"model:{v.ref}", v.digest
            else:
                keys[key_name] = v.key if isinstance(v, ArtifactRef) else str(v)
        return KeyParts(self.name, self.version, cfg.key_config(), keys, models)

    def output_keys(self, primary: str) -> dict[str, str]:
        return {c.name: primary if i == 0 else secondary_key(primary, c.name) for i, c in enumerate(self.outputs)}


def declare(body: Callable[..., Mapping[str, Any] | None], *, version: str, outputs: Sequence[Contract],
            sharded: bool = False, incremental: Any = None, key_names: Mapping[str, str] | None = None) -> Stage:
    """A stage from its body ``body(run, cfg: <StageConfig>, <artifact name>: Artifact | Model, ...)``."""
    hints = typing.get_type_hints(body)
    params = list(inspect.signature(body).parameters)
    if params[:2] != ["run", "cfg"] or not issubclass(hints.get("cfg", object), StageConfig):
        raise TypeError(f"{body.__name__}: a stage body takes (run, cfg: <a StageConfig>, <inputs>...)")
    specs = []
    for name in params[2:]:
        kind, optional = hints.get(name), False
        if typing.get_origin(kind) is Union and type(None) in typing.get_args(kind):
            (kind, *more), optional = [a for a in typing.get_args(kind) if a is not type(None)], True
            kind = None if more else kind
        if kind not in (Artifact, Model):
            raise TypeError(f"{body.__name__}: input {name!r} must be annotated Artifact or Model (or Optional[...] of "
                            f"one), not {hints.get(name)!r}")
        specs.append(InputSpec(name, kind, (key_names or {}).get(name, name), optional))
    if unknown := set(key_names or {}) - {s.name for s in specs}:
        raise TypeError(f"{body.__name__}: key_names for unknown input(s) {sorted(unknown)}")
    stage = Stage(name=body.__name__.rstrip("_"), version=version, config=hints["cfg"], inputs=tuple(specs),
                  outputs=tuple(outputs), body=body, sharded=sharded)
    if incremental is not None:   # the rows it copies are the output's, keyed by the output's id column
        source = next(s for s in specs if s.name == incremental.input)
        incremental = replace(incremental, role=source.key_name, id_col=outputs[0].id_col,
                              input_table=incremental.input if incremental.fingerprint_sql else "")
        stage = replace(stage, incremental=incremental)
    return stage


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class StageRun:
    """What a stage body sees besides its config and inputs: writers, loggers, sharded execution, work folders."""

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
    usage: dict[str, int] = field(default_factory=dict)   # tokens this run computed (infra/engine/costs.py)
    meter: Any = None   # infra.engine.costs.Meter: the runner measures the body's seconds and memory

    def __post_init__(self) -> None:
        for c in self.stage.outputs:
            self.writers[c.name] = ArtifactWriter(self.ctx.store, c.name, self.keys[c.name], self.parts,
                                                  self.ctx.run_id, c, self.label)

    def handles(self) -> dict[str, Artifact | Model | None]:
        """The body's input arguments."""
        return {i.name: (i.kind(self.ctx, self.inputs[i.name]) if self.inputs.get(i.name) is not None else None)
                for i in self.stage.inputs}

    def call_body(self) -> Mapping[str, Any] | None:
        return self.stage.body(self, self.cfg, **self.handles())

    @property
    def key(self) -> str:
        return self.keys[self.stage.primary]

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        from infra.engine.context import logger

        return logger()

    def writer(self, name: str | None = None) -> ArtifactWriter:
        return self.writers[name or self.stage.primary]

    def hold_commit_lock(self) -> None:
        """Sharded stages, once every shard is done: take the key's lock and keep it through the body's last reads
        of the shard parts and the commit (the committing run deletes the staging parts it consolidated, so no one
        may read them unlocked). Raises ``AlreadyCommitted`` when another run committed the key meanwhile."""
        from infra.catalog.locks import acquire

        if self.commit_lease is None:
            self.commit_lease = acquire(self.ctx.locks, f"stage:{self.key}", self.ctx.owner(), poll_s=0.5)
        if self.ctx.catalog.committed(self.keys.values()) is not None:
            raise AlreadyCommitted(self.key)

    def map_shards(self, rows: Callable[[], Iterator[dict[str, Any]]], shard_size: int,
                   fn: Callable[..., ShardResult], args: tuple[Any, ...] | Callable[[int], tuple[Any, ...]], *,
                   parallel: int = 1, per_row: int = 1, total_rows: int | None = None) -> ShardSummary:
        """Run ``fn(job, *args(i))`` on every shard of ``rows()`` exactly once across the runs that need this key
        (infra/engine/shards.py: locks, resume, retries on the executor, reuse of earlier rows); the shard's
        output rows are identified by the output contract's id column. Returns the shards' summary."""
        from infra.engine.shards import run_shards

        id_col = self.stage.outputs[0].id_col
        if id_col is None:   # shards resume by the ids their parts hold
            raise ValueError(f"{self.stage.name}: a sharded stage's output needs an id column "
                             f"({self.stage.outputs[0].name} has none)")
        return run_shards(self, rows, shard_size, fn, args, id_col, parallel=parallel,
                          expected_per_row=per_row, total_rows=total_rows)

    def work_dir(self, sub: str = "") -> str:
        """A folder for training state keyed by the artifact key (a crashed run resumes from it): ``$RLT_WORK_DIR``
        when set (a training gang across hosts needs a folder every rank reaches: a shared file system), else the
        data root when it is a local folder, else ``~/.cache/rlt-factory``."""
        ctx = self.ctx
        base = os.environ.get(WORK_DIR_ENV) or (
            ctx.store.root if ctx.store.local else os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory"))
        return os.path.join(base, "_work", self.stage.name, self.key, sub)

    def count_tokens(self, **counts: int | None) -> None:
        """Add the tokens this run computed (``tokens_in``, ``tokens_out``, ``forward_tokens``; see
        infra/engine/costs.py) to its ``stage_costs`` record."""
        from infra.engine.costs import add_tokens

        add_tokens(self.usage, **counts)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.ctx.tracker.log_metrics(self.mlflow_run, metrics, step)

    def metric_logger(self) -> Callable[[str, float, int], None]:
        return self.ctx.tracker.metric_logger(self.mlflow_run)

    def text_logger(self) -> Callable[[str, str, int], None]:
        return self.ctx.tracker.text_logger(self.mlflow_run)

    def save_checkpoint(self, model_dir: str | None, row: dict[str, Any], name: str | None = None) -> None:
        from infra.engine.checkpoints import store_checkpoint

        store_checkpoint(self, self.writer(name), model_dir, row)

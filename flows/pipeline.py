"""The factory's graph, declared once: which stage runs with which recipe section and which inputs.

Both the plan and the flows walk this graph and compute keys with the stages' own ``Stage.key_parts``, so
``rlt plan`` cannot disagree with what a run does (the runner re-checks the planned key against its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from flows.recipe import Recipe
from infra.artifacts import KeyParts
from infra.models import ModelSnapshot, resolve_model
from tasks import distill, evaluate, filter as filter_, generate, ingest, score, train_teacher
from tasks.stage import Stage

STAGES = ("ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate")


@dataclass(frozen=True)
class From:
    """An input taken from another node's output."""

    node: str
    output: str


@dataclass(frozen=True)
class Model:
    """An input that is a model reference from the recipe (not an artifact)."""

    ref: Callable[[Recipe], str]


@dataclass(frozen=True)
class Node:
    id: str
    stage: Stage
    config: Callable[[Recipe], BaseModel]
    inputs: dict[str, From | Model] = field(default_factory=dict)
    label: str = ""
    enabled: Callable[[Recipe], bool] = lambda r: True
    out_name: Callable[[str], str] = lambda output: output   # name in the flow's result

    def deps(self) -> list[str]:
        return [src.node for src in self.inputs.values() if isinstance(src, From)]


NODES: tuple[Node, ...] = (
    Node("ingest", ingest.STAGE, lambda r: r.ingest),
    Node("train_teacher", train_teacher.STAGE, lambda r: r.train_teacher,
         {"problems": From("ingest", "problems")}),
    Node("generate", generate.STAGE, lambda r: r.generate,
         {"problems": From("ingest", "problems"), "teacher": From("train_teacher", "teacher_checkpoint")}),
    Node("score", score.STAGE, lambda r: r.score,
         {"explanations": From("generate", "explanations"), "teacher": From("train_teacher", "teacher_checkpoint")}),
    Node("filter", filter_.STAGE, lambda r: r.filter,
         {"scored": From("score", "scored_explanations"), "explanations": From("generate", "explanations"),
          "problems": From("ingest", "problems")}),
    Node("distill", distill.STAGE, lambda r: r.distill, {"distill_set": From("filter", "distill_set")}),
    Node("evaluate[base]", evaluate.STAGE, lambda r: r.evaluate, {"model": Model(lambda r: r.distill.student_model)},
         label="base", enabled=lambda r: r.evaluate.include_base, out_name=lambda o: "eval_base"),
    Node("evaluate[distilled]", evaluate.STAGE, lambda r: r.evaluate,
         {"model": From("distill", "student_checkpoint")}, label="distilled", out_name=lambda o: "eval_distilled"),
)


@dataclass
class Planned:
    """A node of one recipe with its resolved config and keys (computed before anything runs)."""

    node: Node
    cfg: BaseModel
    parts: KeyParts
    keys: dict[str, str]
    models: dict[str, ModelSnapshot] = field(default_factory=dict)
    status: str = ""           # cached | run | resume | running
    reason: str = ""
    shards: dict[str, int] = field(default_factory=dict)
    reuse: dict[str, int] = field(default_factory=dict)   # incremental stages: rows, reused, new (flows/plan.py)

    @property
    def key(self) -> str:
        return self.parts.key()

    @property
    def stage(self) -> str:
        return self.node.stage.name

    @property
    def label(self) -> str:
        return self.node.label


def select(recipe: Recipe, targets: list[str] | None = None) -> list[Node]:
    """The enabled nodes needed for ``targets`` (stage names or node ids; None = everything), in order."""
    nodes = [n for n in NODES if n.enabled(recipe)]
    if not targets:
        return nodes
    unknown = [t for t in targets if t not in STAGES and t not in {n.id for n in NODES}]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected one of {list(STAGES)}")
    by_id = {n.id: n for n in nodes}
    want = {n.id for n in nodes if n.id in targets or n.stage.name in targets}
    todo = list(want)
    while todo:
        for dep in by_id[todo.pop()].deps():
            if dep not in want:
                want.add(dep)
                todo.append(dep)
    return [n for n in nodes if n.id in want]


def plan(recipe: Recipe, targets: list[str] | None = None) -> list[Planned]:
    """Every selected node's config and keys, in run order."""
    keys: dict[tuple[str, str], str] = {}
    out: list[Planned] = []
    for node in select(recipe, targets):
        cfg = node.config(recipe)
        inputs: dict[str, Any] = {}
        models: dict[str, ModelSnapshot] = {}
        for role, src in node.inputs.items():
            if isinstance(src, From):
                inputs[role] = keys[(src.node, src.output)]
            else:
                inputs[role] = models[role] = resolve_model(src.ref(recipe))
        parts = node.stage.key_parts(cfg, inputs)
        outs = node.stage.output_keys(parts.key())
        keys.update({(node.id, o): k for o, k in outs.items()})
        out.append(Planned(node, cfg, parts, outs, models))
    return out


def walk(plans: list[Planned]) -> Iterator[tuple[Planned, dict[str, From | ModelSnapshot]]]:
    """Each planned node with its inputs as (From -> resolved by the caller) or model snapshots."""
    for p in plans:
        yield p, {role: (p.models[role] if isinstance(src, Model) else src) for role, src in p.node.inputs.items()}

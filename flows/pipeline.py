"""The factory's graph, derived from the stage declarations (tasks/: each stage's inputs are named after the
artifacts they take, so each comes from the stage that produces it), plus the wiring a recipe decides
(``VARIANTS``: the base student's evaluation takes a model reference; ``LATE``: the reward's student may be the
night's baseline student, a node of a later stage, and the nodes then run in dependency order, not stage order).

Both the plan and the flows walk this graph and compute keys with the stages' own ``Stage.key_parts``, so
``rlt plan`` cannot disagree with what a run does (the runner re-checks the planned key against its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from pydantic import BaseModel

from flows.recipe import Recipe
from infra.catalog.artifacts import KeyParts
from infra.engine.stage import Stage
from infra.models import ModelSnapshot, resolve_model
from tasks import STAGE_NAMES, stages

STAGES = STAGE_NAMES   # the stage names in run order (tasks/__init__.py)


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
class When:
    """An optional input taken from another node's output only when the recipe asks (``LATE``)."""

    source: From
    on: Callable[[Recipe], bool]


@dataclass(frozen=True)
class Node:
    id: str
    stage: Stage
    config: Callable[[Recipe], BaseModel]
    inputs: dict[str, From | Model] = field(default_factory=dict)
    label: str = ""
    enabled: Callable[[Recipe], bool] = lambda r: True
    out_name: Callable[[str], str] = lambda output: output   # name in the flow's result
    late: dict[str, When] = field(default_factory=dict)   # optional inputs a recipe may bind (``LATE``)

    def sources(self, recipe: Recipe) -> dict[str, From | Model]:
        """The inputs this node takes under ``recipe``: the declared ones and the late ones the recipe binds."""
        return {**self.inputs, **{role: w.source for role, w in self.late.items() if w.on(recipe)}}

    def deps(self, recipe: Recipe) -> list[str]:
        return [src.node for src in self.sources(recipe).values() if isinstance(src, From)]


@dataclass(frozen=True)
class Variant:
    """A stage run more than once in one night, as labelled nodes: ``bind`` gives inputs from the recipe instead
    of from the producing stage; ``config`` replaces the stage's section of the recipe. A labelled node takes an
    input from the node of the same label that produces it when there is one (``distill[reference]`` reads
    ``filter[reference]``'s distill set), else from the unlabelled producer."""

    label: str
    bind: dict[str, Callable[[Recipe], str]] = field(default_factory=dict)
    enabled: Callable[[Recipe], bool] = lambda r: True
    config: Optional[Callable[[Recipe], BaseModel]] = None
    omit: tuple[str, ...] = ()   # optional inputs this node never takes


def _baseline_evaluated(r: Recipe) -> bool:
    return "reference" in r.evaluate.baselines


def _reward_from_baseline(r: Recipe) -> bool:
    return "baseline" in (r.train_teacher.reward_student, r.score.reward_student)


def _baseline(r: Recipe) -> bool:
    """The baseline student is distilled when it is evaluated or when it is the reward's student."""
    return _baseline_evaluated(r) or _reward_from_baseline(r)


# The choices a recipe makes that no stage declaration can: the student is evaluated twice, before distillation
# (its base model, a reference from the recipe) and after (the distill stage's checkpoint); with
# `evaluate.baselines: [reference]` a baseline student is distilled, with the same recipe and budget, on the
# reference solutions of the same problems (filter[reference] -> distill[reference] -> evaluate[reference]), so
# the report and the audit `min_gain_over_baseline` can say what the explanations add.
# filter[reference] reads the problems alone (tasks/filter.py), so it takes neither the scored nor the generated
# explanations: that is what lets the baseline branch run before the teacher.
VARIANTS: dict[str, tuple[Variant, ...]] = {
    "filter": (Variant(""), Variant("reference", enabled=_baseline, omit=("scored_explanations", "explanations"),
                                    config=lambda r: r.filter.model_copy(update={"source": "reference"}))),
    "distill": (Variant(""), Variant("reference", enabled=_baseline)),
    "evaluate": (Variant("base", {"student_checkpoint": lambda r: r.distill.student_model},
                         enabled=lambda r: r.evaluate.include_base),
                 Variant("distilled"), Variant("reference", enabled=_baseline_evaluated)),
}

# `reward_student: baseline` (infra/engine/reward_student.py): the RLT reward of train_teacher and score reads with
# the night's baseline student, distill[reference]'s checkpoint (ingest -> filter[reference] -> distill[reference]
# then run before the teacher). Unset, the input is absent and the keys are what they always were.
LATE: dict[str, dict[str, When]] = {
    "train_teacher": {"reward_student": When(From("distill[reference]", "student_checkpoint"),
                                             lambda r: r.train_teacher.reward_student == "baseline")},
    "score": {"reward_student": When(From("distill[reference]", "student_checkpoint"),
                                     lambda r: r.score.reward_student == "baseline")},
}


def _config_of(name: str) -> Callable[[Recipe], BaseModel]:
    return lambda recipe: getattr(recipe, name)   # a stage's section of the recipe is named after it


def _out_name(stage: str, label: str) -> Callable[[str], str]:
    """A node's outputs in the flow's result: ``eval_<label>`` for an evaluation, ``<output>_<label>`` for another
    labelled node (``distill_set_reference``), the output's own name for an unlabelled one."""
    if not label:
        return lambda output: output
    if stage == "evaluate":
        return lambda output: f"eval_{label}"
    return lambda output: f"{output}_{label}"


def derive_nodes() -> tuple[Node, ...]:
    """The graph from the declarations: each input of a stage comes from the earlier stage whose output has the
    input's (artifact) name; a stage with variants becomes one node per variant."""
    producer: dict[tuple[str, str], str] = {}   # (artifact name, label) -> node id
    nodes: list[Node] = []
    for stage in stages():
        for variant in VARIANTS.get(stage.name, (Variant(""),)):
            inputs: dict[str, From | Model] = {}
            late = {} if variant.label else LATE.get(stage.name, {})
            for spec in stage.inputs:
                name = spec.name
                src = producer.get((name, variant.label)) or producer.get((name, ""))
                if name in variant.bind:
                    inputs[name] = Model(variant.bind[name])
                elif spec.optional and (name in variant.omit or name in late):
                    continue
                elif src is not None:
                    inputs[name] = From(src, name)
                else:
                    raise TypeError(f"stage {stage.name}: no earlier stage produces its input {name!r}")
            node_id = f"{stage.name}[{variant.label}]" if variant.label else stage.name
            nodes.append(Node(node_id, stage, variant.config or _config_of(stage.name), inputs, variant.label,
                              variant.enabled, _out_name(stage.name, variant.label), late))
            for contract in stage.outputs:
                if stage.name != "evaluate":   # an evaluation feeds no stage
                    producer[(contract.name, variant.label)] = node_id
    return tuple(nodes)


NODES: tuple[Node, ...] = derive_nodes()


@dataclass
class Planned:
    """A node of one recipe with its resolved config and keys (computed before anything runs)."""

    node: Node
    cfg: BaseModel
    parts: KeyParts
    keys: dict[str, str]
    models: dict[str, ModelSnapshot] = field(default_factory=dict)
    sources: dict[str, From | Model] = field(default_factory=dict)   # the inputs it takes under this recipe
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


def run_order(recipe: Recipe, nodes: list[Node]) -> list[Node]:
    """``nodes`` in dependency order under ``recipe``, else in stage order: stage order itself unless a late input
    (``LATE``) makes a node wait for one of a later stage."""
    by_id = {n.id: n for n in nodes}
    missing = sorted({(n.id, d) for n in nodes for d in n.deps(recipe) if d not in by_id})
    if missing:
        raise ValueError(f"node {missing[0][0]} needs {missing[0][1]}, which this recipe does not enable")
    done: list[Node] = []
    placed: set[str] = set()
    while len(done) < len(nodes):
        ready = next((n for n in nodes if n.id not in placed and all(d in placed for d in n.deps(recipe))), None)
        if ready is None:
            raise ValueError(f"the recipe's graph has a cycle among {sorted(set(by_id) - placed)}")
        done.append(ready)
        placed.add(ready.id)
    return done


def select(recipe: Recipe, targets: list[str] | None = None) -> list[Node]:
    """The enabled nodes needed for ``targets`` (stage names or node ids; None = everything), in run order."""
    nodes = [n for n in NODES if n.enabled(recipe)]
    if not targets:
        return run_order(recipe, nodes)
    unknown = [t for t in targets if t not in STAGES and t not in {n.id for n in NODES}]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected one of {list(STAGES)}")
    by_id = {n.id: n for n in nodes}
    want = {n.id for n in nodes if n.id in targets or n.stage.name in targets}
    todo = list(want)
    while todo:
        for dep in by_id[todo.pop()].deps(recipe):
            if dep not in want:
                want.add(dep)
                todo.append(dep)
    return run_order(recipe, [n for n in nodes if n.id in want])


def plan(recipe: Recipe, targets: list[str] | None = None) -> list[Planned]:
    """Every selected node's config and keys, in run order."""
    keys: dict[tuple[str, str], str] = {}
    out: list[Planned] = []
    for node in select(recipe, targets):
        cfg = node.config(recipe)
        inputs: dict[str, Any] = {}
        models: dict[str, ModelSnapshot] = {}
        sources = node.sources(recipe)
        for role, src in sources.items():
            if isinstance(src, From):
                inputs[role] = keys[(src.node, src.output)]
            else:
                inputs[role] = models[role] = resolve_model(src.ref(recipe))
        parts = node.stage.key_parts(cfg, inputs)
        outs = node.stage.output_keys(parts.key())
        keys.update({(node.id, o): k for o, k in outs.items()})
        out.append(Planned(node, cfg, parts, outs, models, sources))
    return out


def walk(plans: list[Planned]) -> Iterator[tuple[Planned, dict[str, From | ModelSnapshot]]]:
    """Each planned node with its inputs as (From -> resolved by the caller) or model snapshots."""
    for p in plans:
        yield p, {role: (p.models[role] if isinstance(src, Model) else src) for role, src in p.sources.items()}

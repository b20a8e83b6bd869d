"""Recipes: one flat YAML file per run, parsed into typed stage configs (unknown keys are errors).

Settings that several stages must agree on are set once, at the top of the recipe, and derived into every stage
config that uses them (so they are part of each stage's key):

- ``style``: the prompt format (tags, system prompts) used by train_teacher (SFT and the reward), generate,
  score, filter, distill and evaluate;
- ``temperature``: the teacher's sampling temperature, in GRPO and in generate, and therefore the teacher
  temperature of the RLT reward in train_teacher and score (rlt-method.md 2.1: the teacher's log-probs are
  taken at the temperature its explanations were sampled at).

Two defaults follow another stage rather than the top level: ``ingest.decontaminate.benchmarks``, unless the recipe
sets it, is ``evaluate.benchmarks`` (ingest keeps out of training what the recipe evaluates on), and
``score.reward_student``, unless the recipe sets it, is ``train_teacher.reward_student`` (the ledger scores with
the student the teacher was trained against, rlt-method.md 2).

Setting one of the derived stage fields directly to another value is an error that names the top-level field.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_contracts.errors import ExpectedError
from flows.alerts import AlertsConfig
from flows.releases.review_config import HumanReviewAudit, ReviewConfig
from infra.engine.costs import CostsConfig
from infra.engine.executor import ExecutorConfig
from rlt_core.method import TEMPERATURE
from rlt_core.prompts import PromptStyle
from tasks import STAGE_NAMES
from tasks.distill import DistillStageConfig
from tasks.evaluate import EvaluateConfig
from tasks.filter import FilterConfig
from tasks.generate import GenerateConfig
from tasks.ingest import IngestConfig
from tasks.score import ScoreConfig
from tasks.train_teacher import TrainTeacherConfig

DERIVED: dict[str, tuple[tuple[str, ...], ...]] = {
    "style": (("train_teacher", "sft", "style"), ("train_teacher", "reward", "prompt_style"), ("generate", "style"),
              ("score", "reward", "prompt_style"), ("filter", "style"), ("distill", "train", "style"),
              ("evaluate", "style")),
    "temperature": (("train_teacher", "grpo", "temperature"), ("train_teacher", "reward", "teacher_temperature"),
                    ("generate", "sampling", "temperature"), ("score", "reward", "teacher_temperature")),
}


def _get(data: dict, path: tuple[str, ...]):
    node = data
    for k in path:
        if not isinstance(node, dict) or k not in node:
            return None, False
        node = node[k]
    return node, True


def _set(data: dict, path: tuple[str, ...], value) -> None:
    node = data
    for k in path[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(path)}: {k!r} is not a section")
    node[path[-1]] = value


def derive_shared(data: dict) -> dict:
    """Copy the recipe-level ``style`` and ``temperature`` into every stage field they govern."""
    data = copy.deepcopy(data)
    values = {"style": PromptStyle.model_validate(data.get("style") or {}),
              "temperature": float(data.get("temperature", TEMPERATURE))}
    for name, paths in DERIVED.items():
        top = values[name]
        for path in paths:
            given, present = _get(data, path)
            if present:
                same = (PromptStyle.model_validate(given or {}) == top) if name == "style" else given == top
                if not same:
                    shown = top if name == "temperature" else "(a prompt style)"
                    raise ValueError(f"{'.'.join(path)} is set to {given!r}, but it is derived from the recipe's "
                                     f"top-level `{name}` ({shown}) so that every stage agrees: set `{name}` once at "
                                     f"the top of the recipe (or --set {name}=...) instead")
            _set(data, path, top.model_dump(mode="json") if name == "style" else top)
    _default_decontam_benchmarks(data)
    _default_score_student(data)
    return data


def _default_score_student(data: dict) -> None:
    """``score.reward_student`` := ``train_teacher.reward_student`` unless it is set."""
    if not all(isinstance(data.get(k, {}), dict) for k in ("train_teacher", "score")):
        return   # not a section: validation names it
    chosen, given = _get(data, ("train_teacher", "reward_student"))
    if given and not _get(data, ("score", "reward_student"))[1]:
        _set(data, ("score", "reward_student"), chosen)


def _default_decontam_benchmarks(data: dict) -> None:
    """``ingest.decontaminate.benchmarks`` := ``evaluate.benchmarks`` (or evaluate's default) unless it is set."""
    if not all(isinstance(data.get(k, {}), dict) for k in ("ingest", "evaluate")) or \
            not isinstance(data.get("ingest", {}).get("decontaminate", {}), dict):
        return   # not a section: validation names it
    path = ("ingest", "decontaminate", "benchmarks")
    if _get(data, path)[1]:
        return
    evaluated, given = _get(data, ("evaluate", "benchmarks"))
    if not given:
        evaluated = EvaluateConfig.model_fields["benchmarks"].default_factory()
    if isinstance(evaluated, list):
        _set(data, path, list(evaluated))


class AuditsConfig(BaseModel):
    """Write-audit-publish (flows/releases/audit.py, flows/releases/aliases.py): checks on a night's committed
    artifacts; only a night that passes every one moves ``publish_alias``. Every bound is off unless set. Not a stage
    config: no stage key depends on it. Audits that compare with the current release pass as "no baseline" without
    one."""

    model_config = ConfigDict(extra="forbid")
    publish: bool = Field(default=True, description="move publish_alias to the night's distill set when all pass")
    publish_alias: str = Field(default="current", pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
                               description="'latest' is reserved (the newest committed distill set)")
    min_yield: Optional[float] = Field(default=None, ge=0, le=1, description="filter yield: kept teacher "
                                       "explanations / candidate explanations")
    max_quarantine_rate: Optional[float] = Field(default=None, ge=0, le=1, description="quarantined / source rows")
    max_contaminated: Optional[int] = Field(default=None, ge=0, description="source rows quarantined as contaminated "
                                            "(ingest.decontaminate: copies of evaluation items); 0 = none allowed")
    max_reward_mean_shift: Optional[float] = Field(default=None, ge=0, description="|mean reward of kept rows - "
                                                   "the current release's|")
    max_reward_ks: Optional[float] = Field(default=None, ge=0, le=1, description="two-sample KS statistic of kept "
                                           "rewards vs the current release's")
    max_eval_regression: Optional[float] = Field(default=None, ge=0, description="per benchmark: fail when the "
                                                 "release's CI low - the night's CI high exceeds this (0: fail when "
                                                 "the 95% CIs are disjoint with the night below)")
    min_gain_over_baseline: Optional[float] = Field(
        default=None, ge=-1, le=1, description="per benchmark: fail unless the distilled student's paired gain over "
        "the reference baseline student (share of correct samples per item, distilled - baseline, mean over the "
        "items) is at least this; needs `evaluate.baselines: [reference]`")
    human_review: Optional[HumanReviewAudit] = Field(default=None, description="the night's sample reviewed by "
                                                     "people (recipe `review:`) rejects at most max_reject_rate")

    @field_validator("publish_alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.lower() == "latest":
            raise ValueError("'latest' is reserved (it always means the newest committed distill set); "
                             "choose another alias name")
        return v


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    style: PromptStyle = Field(default_factory=PromptStyle, description="prompt format shared by every stage")
    temperature: float = Field(default=TEMPERATURE, gt=0, description="teacher sampling temperature (GRPO, generate) = "
                                                               "the reward's teacher temperature")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train_teacher: TrainTeacherConfig = Field(default_factory=TrainTeacherConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    distill: DistillStageConfig = Field(default_factory=DistillStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    audits: AuditsConfig = Field(default_factory=AuditsConfig, description="write-audit-publish (not a stage)")
    costs: CostsConfig = Field(default_factory=CostsConfig, description="prices for the cost figures (not a stage; "
                               "RLT_PRICE_* environment variables win)")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="where shard work runs (not a "
                                     "stage: no key depends on it); `rlt factory --executor ray` sets kind")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="notifications of failed runs, failed "
                                 "audits, a stale release (not a stage; flows/alerts.py); off without channels")
    review: Optional[ReviewConfig] = Field(default=None, description="log a sample of each night's kept examples "
                                           "to an MLflow review queue (not a stage; flows/releases/review.py)")

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data):
        return derive_shared(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _review_logged(self) -> "Recipe":
        if self.audits.human_review is not None and self.audits.human_review.wait != "skip" and self.review is None:
            raise ValueError("audits.human_review needs a sample to review: set `review:` (e.g. `review: {}`)")
        return self

    @model_validator(mode="after")
    def _baseline_evaluated(self) -> "Recipe":
        if self.audits.min_gain_over_baseline is not None and "reference" not in self.evaluate.baselines:
            raise ValueError("audits.min_gain_over_baseline needs the baseline student: set "
                             "`evaluate: {baselines: [reference]}`")
        return self

    @model_validator(mode="after")
    def _known_stages(self) -> "Recipe":
        for what, names in (("executor.stages", self.executor.stages), ("executor.resources", self.executor.resources)):
            if unknown := sorted(set(names) - set(STAGE_NAMES)):
                raise ValueError(f"{what}: unknown stage(s) {unknown}; expected some of {list(STAGE_NAMES)}")
        return self


class RecipeError(ExpectedError, ValueError):
    pass


def recipe_digest(recipe: dict) -> str:
    """The runs record's recipe hash: what the recipe computes, so the executor (where work runs) and the alerts
    (who hears about it) are left out (a night run locally and again on Ray is the same night)."""
    from infra.catalog.artifacts import digest

    return digest({k: v for k, v in recipe.items() if k not in ("executor", "alerts")})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b.c=value`` (value parsed as YAML: numbers, booleans, lists work)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {k!r} is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            shown = ascii(raw) if not raw.isprintable() else repr(raw)
            raise RecipeError(f"--set {path.strip()}={shown}: the value is not valid YAML "
                              f"({str(exc).splitlines()[0]})") from exc
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Recipe:
    """Read, apply ``--set`` overrides, then ``transform`` (if given: e.g. a backfill's per-night ``{night}``
    substitution, flows/releases/backfill.py) and validate."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {p}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    if transform is not None:
        data = transform(data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '<recipe>'}: "
                             f"{e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise RecipeError(f"recipe {p}: {problems}") from None

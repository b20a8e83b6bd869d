"""Recipes: one flat YAML file per run, parsed into typed stage configs (unknown keys are errors)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tasks.distill import DistillStageConfig
from tasks.evaluate import EvaluateConfig
from tasks.filter import FilterConfig
from tasks.generate import GenerateConfig
from tasks.ingest import IngestConfig
from tasks.score import ScoreConfig
from tasks.train_teacher import TrainTeacherConfig

STAGES = ("ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train_teacher: TrainTeacherConfig = Field(default_factory=TrainTeacherConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    distill: DistillStageConfig = Field(default_factory=DistillStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


class RecipeError(ValueError):
    pass


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
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
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
    try:
        return Recipe.model_validate(data)
    except Exception as exc:
        raise RecipeError(f"recipe {p}: {exc}") from exc

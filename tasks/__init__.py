"""The factory's versioned tasks: one module per stage, each a stage body that reads like the method and its
declaration (``STAGE``: infra/engine/stage.py ``declare``). The engine that runs a declared stage is infra/engine/;
the graph that chains them is derived from these declarations (flows/pipeline.py).

``STAGE_NAMES`` is the one list of the stages, in run order; ``stages()`` imports them.
"""
from __future__ import annotations

import importlib

STAGE_NAMES = ("ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate")


def stages() -> tuple:
    """Every stage's declaration (``tasks.<name>.STAGE``), in run order."""
    return tuple(importlib.import_module(f"tasks.{name}").STAGE for name in STAGE_NAMES)

"""Every shipped recipe plans exactly the keys it planned when they were recorded (users keep their cached nights).

``recipe_keys.json`` was written by the plan at commit 76d73cb, before the stage declarations were restructured
(issue 22): a change to a stage's key function, its config's dump, its input names or its version shows up here
as a changed key. Hub models are pinned to a digest of their name (no hub here); builtin models use their real
digest. A deliberate key change (a stage version bump) updates the file with ``RLT_RECORD_KEYS=1``.
Re-recorded on purpose since: nightly.yaml's filter, distill and evaluate keys when that recipe turned on the
filter's text rules (issue 25; a recipe without them keeps its keys: ``KEY_IF_SET``).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import infra.models
from flows.recipe import load_recipe

GOLDEN = Path(__file__).with_name("recipe_keys.json")
ROOT = Path(__file__).resolve().parents[2]


def planned_keys(monkeypatch) -> dict[str, dict[str, dict[str, str]]]:
    real = infra.models.resolve_model

    def resolve(ref: str):
        if ref.startswith("builtin:") or os.path.isdir(ref):
            return real(ref)
        return infra.models.ModelSnapshot(ref, f"/nonexistent/{ref}", hashlib.sha256(ref.encode()).hexdigest()[:20])

    import flows.pipeline

    for module in (infra.models, flows.pipeline, *_modules_using_resolve()):
        monkeypatch.setattr(module, "resolve_model", resolve, raising=False)
    out = {}
    for path in sorted(glob.glob(str(ROOT / "flows" / "recipes" / "*.yaml"))):
        recipe = load_recipe(path)
        out[os.path.basename(path)] = {p.node.id: p.keys for p in flows.pipeline.plan(recipe)}
    return out


def _modules_using_resolve():
    import sys

    return [m for name, m in list(sys.modules.items()) if name.split(".")[0] in ("tasks", "flows", "infra")
            and m is not None and getattr(m, "resolve_model", None) is infra.models.resolve_model]


def test_every_shipped_recipe_plans_the_recorded_keys(monkeypatch):
    got = planned_keys(monkeypatch)
    if os.environ.get("RLT_RECORD_KEYS"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want), "a recipe was added or removed: record its keys (RLT_RECORD_KEYS=1)"
    changed = [f"{recipe} {node}: {want[recipe].get(node)} -> {keys}" for recipe in want
               for node, keys in got[recipe].items() if want[recipe].get(node) != keys]
    assert not changed, "keys changed (every cached night of these recipes would recompute):\n" + "\n".join(changed)

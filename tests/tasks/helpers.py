"""Shared set-up for stage tests: a store with problems and a base-model teacher checkpoint on a tiny model."""
from __future__ import annotations

import time

from data_contracts import ArtifactRef
from infra.artifacts import ArtifactWriter, KeyParts
from infra.models import resolve_model
from tasks import ingest
from tasks.checkpoints import commit_checkpoint
from tasks.common import RunContext


def base_teacher(ctx: RunContext, model_dir: str) -> ArtifactRef:
    """Register ``model_dir`` as-is as a teacher checkpoint (phase 'base')."""
    snap = resolve_model(model_dir)
    w = ArtifactWriter(ctx.store, ctx.manifest, "teacher_checkpoint",
                       KeyParts("train_teacher", "1", {"phases": [], "base": model_dir}), ctx.run_id)
    return commit_checkpoint(ctx, w, "train_teacher", time.time(), "", role="teacher", model_dir=None,
                             base_ref=model_dir, base_digest=snap.digest, phase="base", steps=0, data_keys=[],
                             student_key=None, config={}, metrics={})


def setup(root: str, model_dir: str, n: int = 6) -> tuple[RunContext, ArtifactRef, ArtifactRef]:
    ctx = RunContext(root, tracking=False)
    probs = ingest.run(ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": n}, heldout_fraction=0.2))
    return ctx, probs["problems"], base_teacher(ctx, model_dir)

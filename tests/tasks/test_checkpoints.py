"""Checkpoints: per-run upload prefix, digest recorded, verified on load; corrupted bytes are refused."""
from __future__ import annotations

import pytest

from infra.artifacts import verify
from infra.models import resolve_model
from tasks import models
from tasks.stage import Output, Stage, StageRun


def test_checkpoint_is_stored_per_run_and_verified_on_load(tmp_path, tiny_model_dir):
    from data_contracts import teacher_checkpoint
    from tasks.common import RunContext
    from tasks.runner import execute
    from pydantic import BaseModel, ConfigDict

    class Cfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 0

    def body(run: StageRun):
        base = resolve_model(tiny_model_dir)
        run.save_checkpoint(tiny_model_dir, dict(role="teacher", base_model=tiny_model_dir, base_digest=base.digest,
                                                 phase="sft", steps=1, data_keys=[], student_key=None,
                                                 config_json={}, metrics_json={}))
        return {}

    stage = Stage("train_teacher", "t", Cfg, (), (Output("teacher_checkpoint", teacher_checkpoint.CONTRACT),), body)
    ctx = RunContext(str(tmp_path / "data"), tracking=False)
    ref = execute(stage, ctx, Cfg(), {})["teacher_checkpoint"]
    rec = ctx.catalog.artifact(ref.key)
    weights = [f for f in rec["files"] if f.endswith(".safetensors")]
    assert weights and all(f"/runs/{ctx.run_id}/" in f for f in weights)
    assert ref.digest == rec["digest"] and verify(ctx.store, rec) == []
    snap = models.checkpoint_snapshot(ctx, ref)
    assert snap.digest == rec["digest"]
    # flip bytes in the stored weights: verification and loading refuse them
    path = ctx.store.path(weights[0])
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0xFF
    open(path, "wb").write(bytes(data))
    assert verify(ctx.store, rec), "rlt catalog verify reports the mismatch"
    models._VERIFIED.clear()
    with pytest.raises(models.CheckpointCorrupt, match=rec["digest"]):
        models.checkpoint_snapshot(ctx, ref)

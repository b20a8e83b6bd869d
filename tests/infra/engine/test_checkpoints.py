"""Checkpoints: per-run upload prefix, digest recorded, verified on load; corrupted bytes are refused."""
from __future__ import annotations

import pytest

from data_contracts import teacher_checkpoint
from infra.catalog.artifacts import verify
from infra.engine import models
from infra.engine.config import StageConfig
from infra.engine.context import RunContext
from infra.engine.runner import execute
from infra.engine.stage import StageRun, declare
from infra.models import resolve_model


class Cfg(StageConfig):
    pass


def _register(tmp_path, base_dir: str, weights_dir: str | None, phase: str):
    """Commit a teacher_checkpoint through the stage runner: ``weights_dir``'s files, or none (phase "base")."""
    def train_teacher(run: StageRun, cfg: Cfg):
        base = resolve_model(base_dir)
        run.save_checkpoint(weights_dir, dict(role="teacher", base_model=base_dir, base_digest=base.digest,
                                              phase=phase, steps=int(phase != "base"), data_keys=[],
                                              student_key=None, config_json={}, metrics_json={}))
        return {}

    stage = declare(train_teacher, version="t", outputs=(teacher_checkpoint.CONTRACT,))
    ctx = RunContext(str(tmp_path / "data"), tracking=False)
    ref = execute(stage, ctx, Cfg(), {})["teacher_checkpoint"]
    return ctx, ref, ctx.catalog.artifact(ref.key)


def test_checkpoint_is_stored_per_run_and_verified_on_load(tmp_path, tiny_model_dir):
    ctx, ref, rec = _register(tmp_path, tiny_model_dir, tiny_model_dir, "sft")
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


def test_base_model_checkpoint_record_verifies(tmp_path, tiny_model_dir):
    """A teacher with no training phases stores no weights: its record's digest must describe its stored files
    (the contract row), not the base model's weights it does not hold (CI caught `verify` failing on this)."""
    ctx, ref, rec = _register(tmp_path, tiny_model_dir, None, "base")
    assert not [f for f in rec["files"] if f.endswith(".safetensors")]
    assert rec["digest"] and verify(ctx.store, rec) == []
    assert models.checkpoint_snapshot(ctx, ref).digest == resolve_model(tiny_model_dir).digest

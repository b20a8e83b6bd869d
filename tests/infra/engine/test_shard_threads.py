"""Where shard work runs: in-process engines on the stage's own thread (one at a time), parallel shards on a pool.

Why it matters: libgomp stops spin-waiting between OpenMP regions once a second thread has run torch ops on a
small machine, and every decode step then pays a futex wake-up (12% slower generation measured, see
infra/engine/shards.run_shards). A failing shard is recorded and the others finish, in both modes.
"""
from __future__ import annotations

import threading

import pytest

from infra.engine.context import StageFailed
from infra.engine.runner import run_stage
from tasks import generate, score
from tests.tasks.helpers import setup

GEN = dict(num_samples=2, sampling={"temperature": 0.7, "max_new_tokens": 8}, shard_size=1, part_size=2,
           batch_size=2, split="all", parallel_shards=4)


def _recording(monkeypatch, module, name: str) -> list[str]:
    seen: list[str] = []
    real = getattr(module, name)

    def wrapped(job, *args):
        seen.append(threading.current_thread().name)
        return real(job, *args)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def test_hf_generation_runs_every_shard_on_the_stage_thread(tmp_path, tiny_model_dir, monkeypatch):
    ctx, problems, teacher = setup(str(tmp_path / "d"), tiny_model_dir, n=4)
    seen = _recording(monkeypatch, generate, "generate_shard")
    ref = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**GEN), problems, teacher)   # parallel_shards=4 asked for
    assert ref.num_rows == 8
    assert seen == [threading.current_thread().name] * 4, seen


def test_parallel_shards_run_on_a_pool_and_a_failure_is_recorded(tmp_path, tiny_model_dir, monkeypatch):
    ctx, problems, teacher = setup(str(tmp_path / "d"), tiny_model_dir, n=4)
    expl = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**GEN), problems, teacher)
    seen = _recording(monkeypatch, score, "score_shard")
    cfg = score.ScoreConfig(student_model=tiny_model_dir, shard_size=2, part_size=2, parallel_shards=2)
    ctx.fail_shards = ("score:00001",)
    with pytest.raises(StageFailed, match="00001"):
        run_stage(score.STAGE, ctx, cfg, expl, teacher)
    assert len(seen) == 4 and all(n.startswith("score-shard") for n in seen), seen
    ctx.fail_shards = ()
    seen.clear()
    ref = run_stage(score.STAGE, ctx, cfg, expl, teacher)
    assert ref.num_rows == 8 and len(seen) == 1   # only the failed shard is redone

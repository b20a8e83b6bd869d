"""generate: sharded, resumable after SIGKILL, failed-only reruns, exact same rows as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from infra.engine.context import StageFailed
from infra.engine.runner import run_stage
from tasks import generate
from tests.tasks.helpers import setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = dict(num_samples=2, sampling={"temperature": 0.7, "max_new_tokens": 24}, shard_size=2, part_size=1,
           batch_size=2)

# The child SIGKILLs itself inside a shard's own writer, once the shard's second part (of four) is on disk: the kill
# lands mid-shard by construction (a parent polling for part files raced the child on a busy machine).
CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from tasks import generate
    from infra.engine.runner import run_stage
    from infra.engine.shards import ShardJob
    from tests.tasks.helpers import setup

    write = ShardJob._write

    def write_then_die(job, table):
        path = write(job, table)
        if len(job.digests) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    ShardJob._write = write_then_die
    ctx, problems, teacher = setup({data!r}, {model!r})
    run_stage(generate.STAGE, ctx, generate.GenerateConfig(**{cfg!r}), problems, teacher)
    print("FINISHED", flush=True)
""")


def _rows(ctx, ref):
    t = ctx.catalog.sql(f"SELECT explanation_id, completion, seed FROM data_explanations "
                         f"WHERE artifact_key = '{ref.key}' ORDER BY explanation_id").to_pylist()
    return t


def _partial_shards(root: str) -> list[str]:
    """Shard folders holding some but not all of a shard's 4 rows (2 problems x K=2, one row per part)."""
    per = CFG["shard_size"] * CFG["num_samples"]
    out = []
    for dp, _, fs in os.walk(root):
        n = sum(f.endswith(".parquet") and f.startswith("part-") for f in fs)
        if "/shards/" in dp + "/" and 0 < n < per:
            out.append(dp)
    return out


def test_sigkill_mid_shard_then_rerun_equals_uninterrupted(tmp_path, tiny_model_dir):
    killed = str(tmp_path / "killed")
    # batch_size 1 (not part of the key): one row per forward loop, so a shard's parts appear one by one
    child = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT, tests=ROOT, data=killed,
                                                               model=tiny_model_dir, cfg=dict(CFG, batch_size=1))],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert _partial_shards(killed), "no shard was part-way written at the kill"

    ctx, problems, teacher = setup(killed, tiny_model_dir)
    cfg = generate.GenerateConfig(**CFG)
    assert ctx.catalog.artifact(generate.STAGE.key_parts(cfg, {"problems": problems.key, "teacher_checkpoint": teacher.key}).key()) is None
    resumed = run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    stats = ctx.catalog.sql(f"SELECT stats_json FROM artifacts WHERE key = '{resumed.key}'").to_pylist()[0]
    assert json.loads(stats["stats_json"])["rows_resumed"] > 0, "the rerun should have resumed written rows"

    ctx2, problems2, teacher2 = setup(str(tmp_path / "clean"), tiny_model_dir)
    clean = run_stage(generate.STAGE, ctx2, cfg, problems2, teacher2)
    assert resumed.key == clean.key
    assert _rows(ctx, resumed) == _rows(ctx2, clean)
    assert resumed.num_rows == clean.num_rows == 2 * sum(1 for r in ctx.catalog.sql(
        "SELECT split FROM data_problems").to_pylist() if r["split"] == "train")


def test_failed_shard_is_the_only_work_a_rerun_does(tmp_path, tiny_model_dir):
    ctx, problems, teacher = setup(str(tmp_path / "s"), tiny_model_dir)
    cfg = generate.GenerateConfig(**CFG)
    ctx.fail_shards = ("generate:00001",)
    with pytest.raises(StageFailed, match="00001"):
        run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    key = generate.STAGE.key_parts(cfg, {"problems": problems.key, "teacher_checkpoint": teacher.key}).key()
    states = ctx.catalog.shard_states(key)
    assert states["00001"]["status"] == "failed" and "injected" in states["00001"]["error"]
    assert all(s["status"] == "done" for sid, s in states.items() if sid != "00001")
    done_before = {sid for sid, s in states.items() if s["status"] == "done"}
    ctx.fail_shards = ()
    ref = run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    stats = ctx.catalog.artifact(ref.key)["stats_json"]
    st = json.loads(stats)
    assert st["shards_reused"] == len(done_before) and st["shards_run"] == 1
    ids = [r["explanation_id"] for r in _rows(ctx, ref)]
    assert len(ids) == len(set(ids)) == ref.num_rows


def test_seed_per_problem_and_sample_is_stable():
    a = generate.sample_seed(0, "p_1", 0)
    assert a == generate.sample_seed(0, "p_1", 0)
    assert len({generate.sample_seed(0, "p_1", k) for k in range(8)}) == 8
    assert generate.sample_seed(1, "p_1", 0) != a

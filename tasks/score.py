"""score: explanations -> scored explanations (the reward ledger), with every RLT reward term per example.

The teacher log-probs come from the teacher checkpoint that generated the explanations (rlt-method.md 2.1,
teacher temperature = sampling temperature); the student is a separate frozen model. Sharded like generate.
"""
from __future__ import annotations

import time
from typing import Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data_contracts import ArtifactRef, scored_explanations
from infra.artifacts import ArtifactWriter, KeyParts
from infra.models import resolve_model
from rlt_core.reward import RewardConfig, RLTReward
from tasks import shards
from tasks.common import RunContext, StageFailed, cached, finish, iter_rows, logger, stage_run
from tasks.models import checkpoint_snapshot, model_and_tokenizer

STAGE = "score"
STAGE_VERSION = "1"


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_model: str = "builtin:smollm2-135m-instruct"
    reward: RewardConfig = Field(default_factory=RewardConfig)
    shard_size: int = Field(default=64, ge=1, description="explanations per shard")
    part_size: int = Field(default=32, ge=1)
    parallel_shards: int = Field(default=1, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"


def key_parts(cfg: ScoreConfig, explanations_key: str, teacher_key: str, student_digest: str) -> KeyParts:
    conf = cfg.model_dump(mode="json", exclude={"parallel_shards", "part_size"})
    return KeyParts(STAGE, STAGE_VERSION, conf, inputs={"explanations": explanations_key, "teacher": teacher_key},
                    models={"student": student_digest})


def ledger_rows(rows: list[dict], breakdowns: list, cfg: RewardConfig, teacher_digest: str,
                student_digest: str) -> list[dict]:
    (a1, a2), (b1, b2) = cfg.answer_coef, cfg.kl_coef
    out = []
    for r, b in zip(rows, breakdowns):
        out.append(dict(explanation_id=r["explanation_id"], problem_id=r["problem_id"],
                        sample_index=r["sample_index"], reward=b.reward, r_ss=b.r_ss, r_kl=b.r_kl,
                        answer_logprob_mean=b.answer_logprob_mean, answer_logprob_min=b.answer_logprob_min,
                        kl_mean=b.kl_mean, kl_max=b.kl_max, format_penalty=b.format_penalty,
                        n_explanation_tokens=b.n_explanation_tokens, n_solution_tokens=b.n_solution_tokens,
                        coef_answer_mean=a1, coef_answer_min=a2, coef_kl_mean=b1, coef_kl_max=b2,
                        teacher_temperature=cfg.teacher_temperature, student_temperature=cfg.student_temperature,
                        teacher_digest=teacher_digest, student_digest=student_digest,
                        reward_config_digest=cfg.digest()))
    return out


@task(name="score-shard", retries=0)
def score_shard(ctx: RunContext, cfg: ScoreConfig, job: shards.ShardJob, teacher_path: str, teacher_digest: str,
                student_path: str, student_digest: str) -> shards.ShardResult:
    todo = [r for r in job.rows if r["explanation_id"] not in job.done_ids]
    if todo:
        teacher, tok = model_and_tokenizer(teacher_path, cfg.dtype)
        student, _ = model_and_tokenizer(student_path, cfg.dtype)
        reward = RLTReward(teacher=teacher, student=student, tokenizer=tok, config=cfg.reward)
        for start in range(0, len(todo), cfg.part_size):
            chunk = todo[start:start + cfg.part_size]
            out = reward.score(questions=[r["question"] for r in chunk], solutions=[r["solution"] for r in chunk],
                               completions=[r["completion"] for r in chunk])
            rows = ledger_rows(chunk, out, cfg.reward, teacher_digest, student_digest)
            shards.write_part(ctx, job, scored_explanations.CONTRACT, rows)
            job.progress(len(rows))
    return shards.finish_shard(ctx, job)


def run(ctx: RunContext, cfg: ScoreConfig, explanations: ArtifactRef, teacher: ArtifactRef) -> ArtifactRef:
    student = resolve_model(cfg.student_model)
    parts = key_parts(cfg, explanations.key, teacher.key, student.digest)
    if (hit := cached(ctx, STAGE, parts.key())) is not None:
        return hit
    log, t0 = logger(), time.time()
    tsnap = checkpoint_snapshot(ctx, teacher)
    with stage_run(ctx, STAGE, parts) as mlrun:
        writer = ArtifactWriter(ctx.store, ctx.manifest, "scored_explanations", parts, ctx.run_id,
                                scored_explanations.CONTRACT)
        summary = shards.run_shards(
            ctx, STAGE, writer, iter_rows(ctx, explanations), cfg.shard_size,
            lambda job, i: shards.submit_task(score_shard, ctx, cfg, job, tsnap.path, tsnap.digest, student.path,
                                               student.digest),
            "explanation_id", parallel=cfg.parallel_shards, label="score", total_rows=explanations.num_rows)
        if summary.failed:
            raise StageFailed(f"score: shard(s) {summary.failed} failed; re-run to redo only those")
        stats = summary.stats()
        stats.update(_reward_stats(ctx, writer))
        ref = finish(ctx, writer, STAGE, t0, stats, mlrun)
        log.info("score: %d explanations scored, mean reward %.3f", ref.num_rows, stats.get("reward_mean", 0.0))
    return ref


def _reward_stats(ctx: RunContext, writer: ArtifactWriter) -> dict:
    import pyarrow.compute as pc

    table = ctx.store.read_parquets([ctx.store.path(f) for f in writer.files], scored_explanations.SCHEMA)
    out = {}
    for col in ("reward", "r_ss", "r_kl", "format_penalty"):
        if table.num_rows:
            out[f"{col}_mean"] = pc.mean(table[col]).as_py()
    return out

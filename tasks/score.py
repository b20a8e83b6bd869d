"""score: explanations -> scored explanations (the reward ledger), with every RLT reward term per example.

The teacher log-probs come from the teacher checkpoint that generated the explanations, at the temperature they
were sampled at (rlt-method.md 2.1; the recipe derives ``reward.teacher_temperature`` from its one
``temperature``); the student is a separate frozen model. Sharded like generate; the two models are loaded once
per process and shared by the shards.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from data_contracts import scored_explanations
from data_contracts.errors import ExpectedError
from infra.engine.config import NOT_IN_KEY
from infra.engine.models import engine_lock, local_model, model_and_tokenizer
from infra.engine.reuse import Incremental, md5
from infra.engine.reward_student import RewardStudentConfig
from infra.engine.shard_job import ShardJob, ShardResult
from infra.engine.stage import Artifact, Model, StageRun, declare
from rlt_core.reward import RewardConfig, RLTReward


class ScoreConfig(RewardStudentConfig):
    reward: RewardConfig = Field(default_factory=RewardConfig)
    shard_size: int = Field(default=64, ge=1, description="explanations per shard")
    part_size: Annotated[int, NOT_IN_KEY] = Field(default=32, ge=1)
    parallel_shards: Annotated[int, NOT_IN_KEY] = Field(
        default=1, ge=1, description="shards in flight (they share the two models); 1 keeps all torch work on the "
        "stage's thread, which is fastest on small CPU machines (see infra/engine/shards.run_shards)")
    dtype: Literal["float32", "bfloat16"] = "float32"


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


def score_shard(job: ShardJob, cfg: ScoreConfig, teacher_path: str, teacher_digest: str,
                student_path: str, student_digest: str, teacher_ref: str = "",
                student_ref: str = "") -> ShardResult:
    """Score one shard's explanations with the RLT reward, part by part."""
    todo = [r for r in job.rows if r["explanation_id"] not in job.done_ids]
    if todo:
        if teacher_ref:   # on a Ray worker of another host the driver's model folders may not exist
            teacher_path = local_model(job.ctx, teacher_ref, teacher_path, teacher_digest)
            student_path = local_model(job.ctx, student_ref, student_path, student_digest)
        teacher, tok = model_and_tokenizer(teacher_path, cfg.dtype)
        student, _ = model_and_tokenizer(student_path, cfg.dtype)
        reward = RLTReward(teacher=teacher, student=student, tokenizer=tok, config=cfg.reward)
        for start in range(0, len(todo), cfg.part_size):
            chunk = todo[start:start + cfg.part_size]
            with engine_lock(teacher_path):
                out = reward.score(questions=[r["question"] for r in chunk], solutions=[r["solution"] for r in chunk],
                                   completions=[r["completion"] for r in chunk])
                n = forward_tokens(tok, chunk, cfg.reward)
            job.write(ledger_rows(chunk, out, cfg.reward, teacher_digest, student_digest))
            job.count_tokens(tokens_in=n, tokens_out=0, forward_tokens=n)
    return job.finish()


def forward_tokens(tok, rows: list[dict], cfg: RewardConfig) -> int:
    """Tokens the reward pushes through the two models for ``rows``: the teacher sequence (prompt + explanation)
    and the student chat, each counted when its model runs on it (a sequence with nothing to score is skipped).
    Re-tokenises what ``RLTReward.score`` tokenised (milliseconds beside the forward passes)."""
    from rlt_core.spans import build_examples

    exs = build_examples(tok, [r["question"] for r in rows], [r["solution"] for r in rows],
                         [r["completion"] for r in rows], cfg.prompt_style, cfg.not_matched_penalty,
                         max_length=cfg.max_length)
    return sum((len(ex.teacher_ids) if ex.teacher_span[1] > ex.teacher_span[0] else 0)
               + (len(ex.student_ids) if (ex.student_thought_span[1] > ex.student_thought_span[0]
                                          or ex.solution_span[1] > ex.solution_span[0]) else 0) for ex in exs)


def score(run: StageRun, cfg: ScoreConfig, explanations: Artifact, teacher_checkpoint: Model,
          reward_student: Optional[Model]) -> dict:
    """Every explanation gets every reward term (r_SS, r_KL and their parts), recorded with the coefficients.
    ``reward_student``: the night's baseline student checkpoint, bound when ``cfg.reward_student`` is 'baseline'."""
    check_temperature(explanations, cfg.reward.teacher_temperature)
    student = cfg.reward_student_snapshot("score", reward_student)
    summary = run.map_shards(
        lambda: explanations.rows(["explanation_id", "problem_id", "sample_index", "question", "solution",
                                   "completion"]),
        cfg.shard_size, score_shard, (cfg, teacher_checkpoint.path, teacher_checkpoint.digest, student.path,
                                      student.digest, teacher_checkpoint.ref, student.ref),
        parallel=cfg.parallel_shards, total_rows=explanations.num_rows)
    stats = dict(summary.stats(), **_reward_stats(run))
    run.log.info("score: %d explanations scored, mean reward %.3f", run.writer().num_rows,
                 stats.get("reward_mean", float("nan")))
    return stats


class TemperatureMismatch(ExpectedError, ValueError):
    """Explanations sampled at one temperature, scored at another (rlt-method.md 2.1)."""


def check_temperature(explanations: Artifact, teacher_temperature: float) -> None:
    """The reward's teacher log-probs must be taken at the temperature the explanations were sampled at
    (rlt-method.md 2.1); a recipe derives both from its one ``temperature``, but a stage called by hand may not."""
    sampled = [t for t in explanations.distinct("temperature") if t is not None]
    if any(abs(t - teacher_temperature) > 1e-9 for t in sampled):
        raise TemperatureMismatch(
            f"score: explanations {explanations.key} were sampled at temperature {', '.join(map(str, sampled))} but "
            f"the reward would take the teacher's log-probs at {teacher_temperature} (score.reward."
            "teacher_temperature); set the recipe's top-level `temperature` once (it sets both), or score at the "
            "sampling temperature")


def _reward_stats(run: StageRun) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cols = ("reward", "r_ss", "r_kl", "format_penalty")
    sums, n = dict.fromkeys(cols, 0.0), 0
    w = run.writer()
    for path in w.parquet_parts():
        with w.store.fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=list(cols))
        n += t.num_rows
        for c in cols:
            sums[c] += pc.sum(t[c]).as_py() or 0.0
    return {f"{c}_mean": sums[c] / n for c in cols} if n else {}


def expected_ids(cfg: ScoreConfig, parts, explanations: list[dict]) -> dict[str, str]:
    """One score row per explanation; the text's fingerprint guards against an id whose text differs (an
    explanation id does not cover generate's dtype or backend)."""
    return {r["explanation_id"]: md5(r["completion"]) for r in explanations}


STAGE = declare(score, version="1", outputs=(scored_explanations.CONTRACT,), sharded=True,
                incremental=Incremental(input="explanations", ids=expected_ids, fingerprint_sql="md5(i.completion)",
                                        one_to_one=True, columns=("explanation_id", "completion")),
                key_names={"teacher_checkpoint": "teacher"})   # the key's name for this input (keys stay as they were)

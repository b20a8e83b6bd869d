"""generate: problems + teacher checkpoint -> explanations, K per problem, sharded and resumable.

Shards are Prefect tasks (never one task per example). Inside a shard, completions are appended in parts
whose rows carry ``explanation_id = hash(problem_id, sample_index, generation-config digest)``; a killed run
resumes by listing the shard's finished parts (each part write is atomic) and skipping the ids they hold.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack
from typing import Iterator, Literal, Optional

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from data_contracts import ArtifactRef, explanations
from infra.artifacts import ArtifactWriter, KeyParts, digest
from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
from rlt_core.prompts import PromptStyle, format_teacher_prompt
from tasks import shards
from tasks.common import RunContext, StageFailed, cached, finish, iter_rows, logger, stage_run, write_provenance
from tasks.models import checkpoint_snapshot, model_and_tokenizer

STAGE = "generate"
STAGE_VERSION = "1"


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(default=4, ge=1, description="K explanations per problem")
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=512)
    backend: Literal["hf", "vllm_server", "vllm"] = "hf"
    endpoints: list[str] = Field(default_factory=list, description="vLLM OpenAI-compatible base URLs (vllm_server)")
    served_model_name: Optional[str] = None
    shard_size: int = Field(default=16, ge=1, description="problems per shard (the unit of retry)")
    part_size: int = Field(default=16, ge=1, description="completions per appended part inside a shard")
    batch_size: int = Field(default=8, ge=1)
    parallel_shards: int = Field(default=1, ge=1)
    seed: int = 0
    split: Literal["train", "heldout", "all"] = "train"
    max_problems: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    style: PromptStyle = Field(default_factory=PromptStyle)


def key_parts(cfg: GenerateConfig, problems_key: str, teacher_key: str) -> KeyParts:
    # endpoints/parallelism change where work runs, not what it produces
    conf = cfg.model_dump(mode="json", exclude={"endpoints", "parallel_shards", "batch_size", "part_size"})
    return KeyParts(STAGE, STAGE_VERSION, conf, inputs={"problems": problems_key, "teacher": teacher_key})


def sample_seed(base: int, problem_id: str, sample_index: int) -> int:
    h = hashlib.sha256(f"{base}:{problem_id}:{sample_index}".encode()).hexdigest()
    return int(h[:8], 16) % (2**31 - 1)


def gen_config_digest(cfg: GenerateConfig, teacher_key: str) -> str:
    return digest({"sampling": cfg.sampling.model_dump(mode="json"), "teacher": teacher_key,
                   "style": cfg.style.model_dump(mode="json"), "seed": cfg.seed})


def explanation_id(problem_id: str, sample_index: int, gcd: str) -> str:
    return "e_" + digest([problem_id, sample_index, gcd])


def _problem_stream(ctx: RunContext, ref: ArtifactRef, cfg: GenerateConfig) -> Iterator[dict]:
    n = 0
    for row in iter_rows(ctx, ref):
        if cfg.split != "all" and row["split"] != cfg.split:
            continue
        if cfg.max_problems is not None and n >= cfg.max_problems:
            return
        n += 1
        yield row


def _make_generator(cfg: GenerateConfig, teacher_path: str, endpoint: str | None):
    if cfg.backend == "hf":
        model, tok = model_and_tokenizer(teacher_path, cfg.dtype)
        return HFGenerator(model, tok, cfg.batch_size)
    if cfg.backend == "vllm_server":
        from rlt_core.generation import VLLMServerGenerator

        return VLLMServerGenerator(endpoint, cfg.served_model_name or teacher_path)
    from rlt_core.generation import VLLMOfflineGenerator

    return VLLMOfflineGenerator(teacher_path, dtype=cfg.dtype)


@task(name="generate-shard", retries=0)
def generate_shard(ctx: RunContext, cfg: GenerateConfig, job: shards.ShardJob, teacher_path: str,
                   teacher_digest: str, teacher_key: str, endpoint: str | None = None) -> shards.ShardResult:
    gcd = gen_config_digest(cfg, teacher_key)
    _, tok = model_and_tokenizer(teacher_path, cfg.dtype)
    todo = [(p, k) for p in job.rows for k in range(cfg.num_samples)
            if explanation_id(p["problem_id"], k, gcd) not in job.done_ids]
    gen = _make_generator(cfg, teacher_path, endpoint) if todo else None
    for start in range(0, len(todo), cfg.part_size):
        chunk = todo[start:start + cfg.part_size]
        reqs = [GenRequest(explanation_id(p["problem_id"], k, gcd),
                           format_teacher_prompt(tok, p["question"], p["solution"], cfg.style),
                           sample_seed(cfg.seed, p["problem_id"], k)) for p, k in chunk]
        results = gen.generate(reqs, cfg.sampling)
        rows = [dict(explanation_id=r.request_id, problem_id=p["problem_id"], sample_index=k,
                     question=p["question"], solution=p["solution"], completion=r.text,
                     teacher_digest=teacher_digest, gen_config_digest=gcd, seed=q.seed,
                     temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                     max_new_tokens=cfg.sampling.max_new_tokens, prompt_tokens=r.prompt_tokens,
                     completion_tokens=r.completion_tokens, finish_reason=r.finish_reason,
                     latency_s=r.latency_s, backend=gen.name) for (p, k), q, r in zip(chunk, reqs, results)]
        shards.write_part(ctx, job, explanations.CONTRACT, rows)
        job.progress(len(rows))
    return shards.finish_shard(ctx, job)


def run(ctx: RunContext, cfg: GenerateConfig, problems: ArtifactRef, teacher: ArtifactRef) -> ArtifactRef:
    parts = key_parts(cfg, problems.key, teacher.key)
    key = parts.key()
    if (hit := cached(ctx, STAGE, key)) is not None:
        return hit
    log, t0 = logger(), time.time()
    snap = checkpoint_snapshot(ctx, teacher)
    with stage_run(ctx, STAGE, parts) as mlrun, ExitStack() as stack:
        endpoints = list(cfg.endpoints)
        if cfg.backend == "vllm_server" and not endpoints:
            from infra.vllm_server import VLLMServer

            server = stack.enter_context(VLLMServer(snap.path))
            endpoints = [server.base_url]
            cfg = cfg.model_copy(update={"served_model_name": cfg.served_model_name or snap.path})
        writer = ArtifactWriter(ctx.store, ctx.manifest, "explanations", parts, ctx.run_id, explanations.CONTRACT)
        per_sample = cfg.num_samples

        def submit(job: shards.ShardJob, i: int):
            ep = endpoints[i % len(endpoints)] if endpoints else None
            return shards.submit_task(generate_shard, ctx, cfg, job, snap.path, snap.digest, teacher.key, ep)

        summary = shards.run_shards(ctx, STAGE, writer, _problem_stream(ctx, problems, cfg), cfg.shard_size,
                                    submit, "explanation_id", expected_per_row=per_sample,
                                    parallel=cfg.parallel_shards, label="generate")
        if summary.failed:
            raise StageFailed(f"generate: {len(summary.failed)} shard(s) failed: {summary.failed}; "
                              "re-run the same command to redo only those")
        stats = dict(summary.stats(), **_token_stats(ctx, writer))
        elapsed = max(time.time() - t0, 1e-9)
        stats.update(seconds=elapsed, completion_tok_per_s=stats["completion_tokens"] / elapsed)
        ref = finish(ctx, writer, STAGE, t0, stats, mlrun)
        write_provenance(ctx, ref.key, "explanation", list(_ids(ctx, writer)), "explanation_id", "problem_id",
                         "problem")
        log.info("generate: %d explanations, %.1f completion tok/s", ref.num_rows, stats.get("completion_tok_per_s", 0))
    return ref


def _ids(ctx: RunContext, writer: ArtifactWriter) -> Iterator[dict]:
    for batch in ctx.store.iter_parquet_batches([ctx.store.path(f) for f in writer.files]):
        yield from batch.select(["explanation_id", "problem_id"]).to_pylist()


def _token_stats(ctx: RunContext, writer: ArtifactWriter) -> dict:
    ptok = ctok = stops = 0
    for batch in ctx.store.iter_parquet_batches([ctx.store.path(f) for f in writer.files]):
        d = batch.select(["prompt_tokens", "completion_tokens", "finish_reason"]).to_pydict()
        ptok += sum(d["prompt_tokens"])
        ctok += sum(d["completion_tokens"])
        stops += sum(1 for r in d["finish_reason"] if r == "stop")
    return {"prompt_tokens": ptok, "completion_tokens": ctok, "finish_stop": stops}

"""generate: problems + teacher checkpoint -> explanations, K per problem, sharded and resumable.

Shards are Prefect tasks (never one task per example). Rows carry
``explanation_id = hash(problem_id, sample_index, generation-config digest)``, so a killed run's successor skips
what is already written. The engine stays warm: the model is loaded once per process (or one vLLM server per
endpoint) and fed shard after shard; parts are written on a background thread. An in-process engine runs its
shards one after another on the stage's own thread (see ``shards.run_shards`` for why); vLLM-server shards run
``parallel_shards`` at a time, enough to keep every endpoint's request window full, each through the pool of
endpoints (infra/engine/endpoints.py): a shard whose endpoint is down, or dies mid-shard, sends its remaining requests
to a healthy one (the same texts, if every endpoint serves the same model and dtype).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from typing import Annotated, Iterator, Literal, Optional

from pydantic import Field

from data_contracts import explanations
from infra.catalog.artifacts import digest
from infra.engine.config import NOT_IN_KEY, StageConfig
from infra.engine.models import engine_lock, tokenizer
from infra.engine.reuse import Incremental, Selection
from infra.engine.serving import Serving, serving
from infra.engine.shard_job import ShardJob, ShardResult
from infra.engine.stage import Artifact, Model, StageRun, declare
from rlt_core.generation import GenRequest, SamplingConfig
from rlt_core.method import TEMPERATURE
from rlt_core.prompts import PromptStyle, format_teacher_prompt

log = logging.getLogger("rlt")


class GenerateConfig(StageConfig):
    num_samples: int = Field(default=4, ge=1, description="K explanations per problem")
    sampling: SamplingConfig = SamplingConfig(temperature=TEMPERATURE, top_p=1.0, max_new_tokens=512)
    backend: Literal["hf", "vllm_server", "vllm"] = "hf"
    # where and how fast the work runs, not what it produces: outside the key
    endpoints: Annotated[list[str], NOT_IN_KEY] = Field(
        default_factory=list, description="vLLM OpenAI-compatible base URLs (vllm_server): a pool, shards spread "
        "over the healthy ones (infra/engine/endpoints.py); [ray]: the servers the Ray cluster's nodes advertise (a "
        "resource vllm_endpoint_<port>, see docs/scale-out.md); none: a server is started for the teacher")
    served_model_name: Optional[str] = None
    concurrency: Annotated[int, NOT_IN_KEY] = Field(default=64, ge=1, description="requests in flight per vLLM "
                                                                                  "endpoint (vllm_server)")
    shard_size: int = Field(default=16, ge=1, description="problems per shard (the unit of retry)")
    part_size: Annotated[int, NOT_IN_KEY] = Field(default=16, ge=1, description="completions per appended part "
                                                                                "inside a shard")
    batch_size: Annotated[int, NOT_IN_KEY] = Field(default=8, ge=1)
    parallel_shards: Annotated[int, NOT_IN_KEY] = Field(
        default=1, ge=1, description="vllm_server: shards in flight (raised to fill every endpoint's window); "
        "in-process engines (hf, vllm) always run one shard at a time on the stage's thread (infra/engine/serving.py)")
    seed: int = 0
    split: Literal["train", "heldout", "all"] = "train"
    max_problems: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    style: PromptStyle = Field(default_factory=PromptStyle)


def sample_seed(base: int, problem_id: str, sample_index: int) -> int:
    h = hashlib.sha256(f"{base}:{problem_id}:{sample_index}".encode()).hexdigest()
    return int(h[:8], 16) % (2**31 - 1)


def gen_config_digest(cfg: GenerateConfig, teacher_key: str) -> str:
    return digest({"sampling": cfg.sampling.model_dump(mode="json"), "teacher": teacher_key,
                   "style": cfg.style.model_dump(mode="json"), "seed": cfg.seed})


def explanation_id(problem_id: str, sample_index: int, gcd: str) -> str:
    return "e_" + digest([problem_id, sample_index, gcd])


def generate_shard(job: ShardJob, cfg: GenerateConfig, served: Serving, teacher_key: str,
                   shard_index: int) -> ShardResult:
    """K completions for each problem of one shard, skipping ids an earlier attempt wrote (rlt-method.md 4: the
    teacher prompt holds the question and the solution; the sampling seed is fixed per problem and sample)."""
    gcd = gen_config_digest(cfg, teacher_key)
    tok = tokenizer(served.local_path(job.ctx))
    todo = [(p, k) for p in job.rows for k in range(cfg.num_samples)
            if explanation_id(p["problem_id"], k, gcd) not in job.done_ids]
    by_id = {explanation_id(p["problem_id"], k, gcd): (p, k) for p, k in todo}
    with engine_lock(served.local_path(job.ctx)):   # the tokenizer is shared with the engine (not thread-safe)
        reqs = [GenRequest(rid, format_teacher_prompt(tok, p["question"], p["solution"], cfg.style),
                           sample_seed(cfg.seed, p["problem_id"], k)) for rid, (p, k) in by_id.items()]

    def write(chunk: list, backend: str) -> None:
        job.write([_row(by_id[r.request_id], r, cfg, served.model_digest, gcd, backend) for r in chunk])
        job.count_tokens(tokens_in=sum(r.prompt_tokens for r in chunk),
                         tokens_out=sum(r.completion_tokens for r in chunk))

    if reqs:
        served.run(job.ctx, job.shard_id, reqs, cfg.sampling, cfg.part_size, shard_index, write)
    return job.finish()


def _row(pk, r, cfg: GenerateConfig, teacher_digest: str, gcd: str, backend: str) -> dict:
    p, k = pk
    return dict(explanation_id=r.request_id, problem_id=p["problem_id"], sample_index=k, question=p["question"],
                solution=p["solution"], completion=r.text, teacher_digest=teacher_digest, gen_config_digest=gcd,
                seed=sample_seed(cfg.seed, p["problem_id"], k), temperature=cfg.sampling.temperature,
                top_p=cfg.sampling.top_p, max_new_tokens=cfg.sampling.max_new_tokens, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, finish_reason=r.finish_reason, latency_s=r.latency_s,
                backend=backend)


def selection(cfg: GenerateConfig) -> Selection:
    """The problems this config works on: its split, at most ``max_problems`` by problem_id."""
    return Selection(None if cfg.split == "all" else "split", cfg.split, cfg.max_problems)


def _problems(problems: Artifact, cfg: GenerateConfig) -> Iterator[dict]:
    sel = selection(cfg)
    return itertools.islice(problems.rows(["problem_id", "question", "solution"], where=sel.where), sel.limit)


def generate(run: StageRun, cfg: GenerateConfig, problems: Artifact, teacher_checkpoint: Model) -> dict:
    """Sample K explanations per problem from the teacher, shard by shard."""
    with serving(run, cfg.backend, teacher_checkpoint, endpoints=cfg.endpoints, dtype=cfg.dtype,
                 served_model_name=cfg.served_model_name, concurrency=cfg.concurrency, batch_size=cfg.batch_size,
                 parallel=cfg.parallel_shards, rows_per_shard=cfg.shard_size * cfg.num_samples) as served:
        total = problems.count(selection(cfg).where)
        summary = run.map_shards(lambda: _problems(problems, cfg), cfg.shard_size, generate_shard,
                                 lambda i: (cfg, served, teacher_checkpoint.key, i), parallel=served.parallel,
                                 per_row=cfg.num_samples, total_rows=min(total, cfg.max_problems or total))
    stats = dict(summary.stats(), **_token_stats(run))
    run.log.info("generate: %d explanations, %d completion tokens", run.writer().num_rows,
                 stats["completion_tokens"])
    return stats


def _token_stats(run: StageRun) -> dict:
    import pyarrow.compute as pc

    ptok = ctok = stops = 0
    w = run.writer()
    for path in w.parquet_parts():
        with w.store.fs.open(path, "rb") as f:
            import pyarrow.parquet as pq

            t = pq.read_table(f, columns=["prompt_tokens", "completion_tokens", "finish_reason"])
        ptok += pc.sum(t["prompt_tokens"]).as_py() or 0
        ctok += pc.sum(t["completion_tokens"]).as_py() or 0
        stops += pc.sum(pc.equal(t["finish_reason"], "stop")).as_py() or 0
    return {"prompt_tokens": ptok, "completion_tokens": ctok, "finish_stop": stops}


def expected_ids(cfg: GenerateConfig, parts, problems: list[dict]) -> dict[str, str]:
    """The explanation ids a shard of problems produces (no input fingerprint: the id hashes the problem's
    content, the sample index and the generation config, and donors share every other key part)."""
    gcd = gen_config_digest(cfg, parts.inputs["teacher"])
    return {explanation_id(p["problem_id"], k, gcd): "" for p in problems for k in range(cfg.num_samples)}


STAGE = declare(generate, version="1", outputs=(explanations.CONTRACT,), sharded=True,
                incremental=Incremental(input="problems", ids=expected_ids, select=selection, columns=("problem_id",)),
                key_names={"teacher_checkpoint": "teacher"})   # the key's name for this input (keys stay as they were)

"""generate: problems + teacher checkpoint -> explanations, K per problem, sharded and resumable.

Shards are Prefect tasks (never one task per example). Rows carry
``explanation_id = hash(problem_id, sample_index, generation-config digest)``, so a killed run's successor skips
what is already written. The engine stays warm: the model is loaded once per process (or one vLLM server per
endpoint) and fed shard after shard; parts are written on a background thread. An in-process engine runs its
shards one after another on the stage's own thread (see ``shards.run_shards`` for why); vLLM-server shards run
``parallel_shards`` at a time, enough to keep every endpoint's request window full, each through the pool of
endpoints (tasks/endpoints.py): a shard whose endpoint is down, or dies mid-shard, sends its remaining requests to a
healthy one (the same texts, if every endpoint serves the same model and dtype).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from contextlib import ExitStack
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import explanations
from infra.artifacts import digest
from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
from rlt_core.prompts import PromptStyle, format_teacher_prompt
from tasks import shards
from tasks.reuse import Incremental
from tasks.models import engine_lock, local_model, model_and_tokenizer, tokenizer
from tasks.stage import Output, Stage, StageRun

log = logging.getLogger("rlt")


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(default=4, ge=1, description="K explanations per problem")
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=512)
    backend: Literal["hf", "vllm_server", "vllm"] = "hf"
    endpoints: list[str] = Field(default_factory=list, description="vLLM OpenAI-compatible base URLs (vllm_server): "
                                     "a pool, shards spread over the healthy ones (tasks/endpoints.py); [ray]: the servers the Ray "
                                     "cluster's nodes advertise (a resource vllm_endpoint_<port>, see docs/scale-out.md)")
    served_model_name: Optional[str] = None
    concurrency: int = Field(default=64, ge=1, description="requests in flight per vLLM endpoint (vllm_server)")
    shard_size: int = Field(default=16, ge=1, description="problems per shard (the unit of retry)")
    part_size: int = Field(default=16, ge=1, description="completions per appended part inside a shard")
    batch_size: int = Field(default=8, ge=1)
    parallel_shards: int = Field(default=1, ge=1, description="vllm_server: shards in flight (raised to fill every "
                                 "endpoint's window); in-process engines (hf, vllm) always run one shard at a time "
                                 "on the stage's thread (see tasks/shards.run_shards)")
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


_ENGINES: dict[tuple, object] = {}


def engine(cfg: GenerateConfig, teacher_path: str, endpoint: str | None, connect_retries: int | None = None):
    """One generator per (backend, model, endpoint) per process, reused by every shard."""
    k = (cfg.backend, teacher_path, endpoint, cfg.dtype, cfg.batch_size, cfg.concurrency, cfg.served_model_name,
         connect_retries)
    if k not in _ENGINES:
        if cfg.backend == "hf":
            model, tok = model_and_tokenizer(teacher_path, cfg.dtype)
            _ENGINES[k] = HFGenerator(model, tok, cfg.batch_size)
        elif cfg.backend == "vllm_server":
            from rlt_core.generation import VLLMServerGenerator

            _ENGINES[k] = VLLMServerGenerator(endpoint, cfg.served_model_name or teacher_path, cfg.concurrency,
                                              connect_retries=connect_retries)
        else:
            from rlt_core.generation import VLLMOfflineGenerator

            _ENGINES[k] = VLLMOfflineGenerator(teacher_path, dtype=cfg.dtype)
    return _ENGINES[k]


def generate_shard(job: shards.ShardJob, cfg: GenerateConfig, teacher_path: str, teacher_digest: str,
                   teacher_key: str, endpoint: str | None = None, shard_index: int | None = None) -> shards.ShardResult:
    """K completions for each problem of one shard, skipping ids an earlier attempt wrote. vllm_server: through
    the pool of ``cfg.endpoints`` (or ``[endpoint]``), starting on ``endpoint`` (shard ``shard_index``'s own)."""
    gcd = gen_config_digest(cfg, teacher_key)
    served = teacher_path   # the model name a vLLM server was started with (when served_model_name is unset)
    # on a Ray worker of another host the driver's folder may not exist: the checkpoint is fetched and verified
    teacher_path = local_model(job.ctx, f"artifact:{teacher_key}", teacher_path, teacher_digest)
    tok = tokenizer(teacher_path)
    todo = [(p, k) for p in job.rows for k in range(cfg.num_samples)
            if explanation_id(p["problem_id"], k, gcd) not in job.done_ids]
    by_id = {explanation_id(p["problem_id"], k, gcd): (p, k) for p, k in todo}
    with engine_lock(teacher_path):   # the tokenizer is shared with the engine (not thread-safe)
        reqs = [GenRequest(rid, format_teacher_prompt(tok, p["question"], p["solution"], cfg.style),
                           sample_seed(cfg.seed, p["problem_id"], k)) for rid, (p, k) in by_id.items()]
    if not reqs:
        return job.finish()

    def write(chunk: list, backend: str) -> None:
        job.write([_row(by_id[r.request_id], r, cfg, teacher_digest, gcd, backend) for r in chunk])
        job.count_tokens(tokens_in=sum(r.prompt_tokens for r in chunk),
                         tokens_out=sum(r.completion_tokens for r in chunk))

    if cfg.backend == "vllm_server":
        _serve_on_pool(job.shard_id, cfg, served, reqs, write, endpoint, shard_index)
    else:
        gen = engine(cfg, teacher_path, endpoint)
        results = gen.stream(reqs, cfg.sampling, lock=engine_lock(teacher_path))
        while chunk := list(itertools.islice(results, cfg.part_size)):
            write(chunk, gen.name)
    return job.finish()


# with other endpoints to go to, a refused/reset connection is retried once (a stale keep-alive connection),
# not through the client's full backoff (~7.5 s, or 5 connect timeouts for an unreachable host): the pool moves
# the requests on and re-probes the endpoint after its cooldown; 429/5xx keep the client's full retries
FAILOVER_CONNECT_RETRIES = 1


def _serve_on_pool(shard_id: str, cfg: GenerateConfig, teacher_path: str, reqs: list[GenRequest], write,
                   endpoint: str | None, shard_index: int | None) -> None:
    """A shard's requests on the vLLM endpoint pool: failover to a healthy endpoint, never a request twice."""
    from rlt_core.generation import VLLMServerGenerator
    from tasks.endpoints import describe_counts, pool_for, serve

    urls = [u.rstrip("/") for u in (cfg.endpoints or [endpoint])]
    if shard_index is None:
        shard_index = urls.index(endpoint.rstrip("/")) if endpoint and endpoint.rstrip("/") in urls else 0
    pool = pool_for(urls)
    retries = FAILOVER_CONNECT_RETRIES if len(urls) > 1 else None

    def stream(url: str, todo: list[GenRequest]):
        return engine(cfg, teacher_path, url, retries).stream(todo, cfg.sampling)

    served = serve(pool, shard_index, reqs, stream, lambda chunk: write(chunk, VLLMServerGenerator.name),
                   cfg.part_size)
    log.info("generate shard %s: %d request(s) by endpoint: %s", shard_id, sum(served.values()),
             describe_counts(served))


def _row(pk, r, cfg: GenerateConfig, teacher_digest: str, gcd: str, backend: str) -> dict:
    p, k = pk
    return dict(explanation_id=r.request_id, problem_id=p["problem_id"], sample_index=k, question=p["question"],
                solution=p["solution"], completion=r.text, teacher_digest=teacher_digest, gen_config_digest=gcd,
                seed=sample_seed(cfg.seed, p["problem_id"], k), temperature=cfg.sampling.temperature,
                top_p=cfg.sampling.top_p, max_new_tokens=cfg.sampling.max_new_tokens, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, finish_reason=r.finish_reason, latency_s=r.latency_s,
                backend=backend)


def selection(cfg: GenerateConfig):
    """The problems this config works on: (SQL filter, the same as a predicate, at most this many by problem_id)."""
    if cfg.split == "all":
        return "", None, cfg.max_problems
    return f"split = '{cfg.split}'", (lambda r: r["split"] == cfg.split), cfg.max_problems


def _problems(run: StageRun) -> Iterator[dict]:
    where, _, limit = selection(run.cfg)
    return itertools.islice(run.rows("problems", ["problem_id", "question", "solution"], where=where), limit)


def generate(run: StageRun) -> dict:
    """Sample K explanations per problem from the teacher, shard by shard."""
    cfg: GenerateConfig = run.cfg
    teacher, snap = run.ref("teacher"), run.model("teacher")
    with ExitStack() as stack:
        endpoints = list(cfg.endpoints)
        if cfg.backend == "vllm_server" and endpoints == ["ray"]:   # the servers the cluster's nodes advertise
            from tasks.endpoints import discover

            endpoints = discover(run.ctx)
            cfg = cfg.model_copy(update={"endpoints": endpoints})
        if cfg.backend == "vllm_server" and not endpoints:
            from infra.vllm_server import VLLMServer

            endpoints = [stack.enter_context(VLLMServer(snap.path)).base_url]
            cfg = cfg.model_copy(update={"served_model_name": cfg.served_model_name or snap.path,
                                         "endpoints": endpoints})
        if cfg.backend == "vllm_server":   # enough shards in flight to fill every endpoint's window, +2 queued
            per_shard = cfg.shard_size * cfg.num_samples
            need = len(endpoints) * (-(-cfg.concurrency // per_shard) + 2)
            cfg = cfg.model_copy(update={"parallel_shards": max(cfg.parallel_shards, need)})
        else:   # the model computes in this process: on this thread only (OpenMP, see shards.run_shards)
            cfg = cfg.model_copy(update={"parallel_shards": 1})

        def args(i: int) -> tuple:   # shards spread over the endpoints (a dead one's over the others: endpoints.py)
            return (cfg, snap.path, snap.digest, teacher.key, endpoints[i % len(endpoints)] if endpoints else None, i)

        total = run.count("problems", selection(cfg)[0])
        summary = shards.run_shards(run, lambda: _problems(run), cfg.shard_size, generate_shard, args, "explanation_id",
                                    parallel=cfg.parallel_shards, expected_per_row=cfg.num_samples,
                                    total_rows=min(total, cfg.max_problems or total))
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


STAGE = Stage(
    name="generate", version="1", config=GenerateConfig, inputs=("problems", "teacher"),
    outputs=(Output("explanations", explanations.CONTRACT, ("explanation_id", "explanation", "problem_id",
                                                             "problem")),),
    body=generate, sharded=True,
    incremental=Incremental(role="problems", id_col="explanation_id", ids=expected_ids, select=selection,
                            columns=("problem_id",)),
    # where and how fast the work runs, not what it produces
    key_exclude=frozenset({"endpoints", "parallel_shards", "batch_size", "part_size", "concurrency"}))


def run(ctx, cfg: GenerateConfig, problems, teacher):
    """Run the stage outside a flow (tests, notebooks, benchmarks)."""
    from tasks.runner import execute

    return execute(STAGE, ctx, cfg, {"problems": problems, "teacher": teacher})["explanations"]

"""Where generation runs, so a generating stage does not have to know: an in-process engine (Hugging Face, or vLLM
offline) loaded once per process, or a pool of vLLM OpenAI-compatible servers, given (``endpoints``), advertised by
the Ray cluster's nodes (``[ray]``) or started here for the stage's model (none given).

``serving(run, ...)`` resolves that once per stage run and says how many shards to keep in flight: an in-process
engine computes on the stage's own thread (one shard at a time, see infra/engine/shards.py), a server pool gets
enough shards to fill every endpoint's request window. The ``Serving`` it yields is plain data, shipped with each
shard (to a Ray worker too); ``Serving.run`` generates a shard's requests and hands each chunk of results to the
shard's writer: on a pool, a shard whose endpoint is down or dies mid-shard sends its remaining requests to a
healthy one and never sends a request twice (infra/engine/endpoints.py).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Optional, Sequence

from infra.engine.models import engine_lock, local_model, model_and_tokenizer
from rlt_core.generation import Generator, GenRequest, GenResult, HFGenerator, SamplingConfig

if TYPE_CHECKING:
    from infra.engine.context import RunContext
    from infra.engine.stage import Model, StageRun

log = logging.getLogger("rlt")

Backend = Literal["hf", "vllm_server", "vllm"]
# with other endpoints to go to, a refused/reset connection is retried once (a stale keep-alive connection),
# not through the client's full backoff (~7.5 s, or 5 connect timeouts for an unreachable host): the pool moves
# the requests on and re-probes the endpoint after its cooldown; 429/5xx keep the client's full retries
FAILOVER_CONNECT_RETRIES = 1
_ENGINES: dict[tuple[Any, ...], Generator] = {}


@dataclass(frozen=True)
class Serving:
    """How one stage run generates (picklable: it travels with every shard)."""

    backend: Backend
    model_path: str             # the model's folder on the driver
    model_ref: str              # ``artifact:<key>`` of a checkpoint (fetched on a worker whose host lacks the folder)
    model_digest: str
    served_model_name: str = ""   # the name the vLLM servers serve the model under (default: model_path)
    endpoints: tuple[str, ...] = ()
    concurrency: int = 64       # requests in flight per endpoint
    batch_size: int = 8         # in-process engines
    dtype: str = "float32"
    parallel: int = 1           # shards in flight

    def local_path(self, ctx: RunContext) -> str:
        """The model's folder in this process (a Ray worker on another host fetches and verifies the checkpoint)."""
        return local_model(ctx, self.model_ref, self.model_path, self.model_digest)

    def endpoint_of(self, shard_index: int) -> Optional[str]:
        """The endpoint a shard starts on (shards spread over the pool; a dead one's over the others)."""
        return self.endpoints[shard_index % len(self.endpoints)] if self.endpoints else None

    def run(self, ctx: RunContext, shard_id: str, requests: Sequence[GenRequest], sampling: SamplingConfig,
            part_size: int, shard_index: int, write: Callable[[list[GenResult], str], None]) -> None:
        """Generate ``requests``; ``write(chunk, backend name)`` receives the results ``part_size`` at a time."""
        if self.backend == "vllm_server":
            self._run_on_pool(shard_id, requests, sampling, part_size, shard_index, write)
            return
        path = self.local_path(ctx)
        gen = self._engine(path, None)
        results = gen.stream(list(requests), sampling, lock=engine_lock(path))
        while chunk := list(itertools.islice(results, part_size)):
            write(chunk, gen.name)

    def _run_on_pool(self, shard_id: str, requests: Sequence[GenRequest], sampling: SamplingConfig, part_size: int,
                     shard_index: int, write: Callable[[list[GenResult], str], None]) -> None:
        from infra.engine.endpoints import describe_counts, pool_for, serve
        from rlt_core.generation import VLLMServerGenerator

        urls = [u.rstrip("/") for u in self.endpoints]
        pool = pool_for(urls)
        retries = FAILOVER_CONNECT_RETRIES if len(urls) > 1 else None

        def stream(url: str, todo: list[GenRequest]) -> Iterator[GenResult]:
            return self._engine(self.served_model_name or self.model_path, url, retries).stream(todo, sampling)

        served = serve(pool, shard_index % len(urls), list(requests), stream,
                       lambda chunk: write(chunk, VLLMServerGenerator.name), part_size)
        log.info("generate shard %s: %d request(s) by endpoint: %s", shard_id, sum(served.values()),
                 describe_counts(served))

    def _engine(self, model: str, endpoint: Optional[str], connect_retries: Optional[int] = None) -> Generator:
        """One generator per (backend, model, endpoint) per process, reused by every shard."""
        k = (self.backend, model, endpoint, self.dtype, self.batch_size, self.concurrency, connect_retries)
        if k not in _ENGINES:
            if self.backend == "hf":
                m, tok = model_and_tokenizer(model, self.dtype)
                _ENGINES[k] = HFGenerator(m, tok, self.batch_size)
            elif self.backend == "vllm_server":
                from rlt_core.generation import VLLMServerGenerator

                if endpoint is None:   # run() sends a server backend's shards through _run_on_pool, with a url
                    raise ValueError("backend vllm_server needs an endpoint")
                _ENGINES[k] = VLLMServerGenerator(endpoint, model, self.concurrency, connect_retries=connect_retries)
            else:
                from rlt_core.generation import VLLMOfflineGenerator

                _ENGINES[k] = VLLMOfflineGenerator(model, dtype=self.dtype)
        return _ENGINES[k]


@contextlib.contextmanager
def serving(run: StageRun, backend: Backend, model: Model, *, endpoints: Sequence[str] = (),
            served_model_name: Optional[str] = None, concurrency: int = 64, batch_size: int = 8,
            dtype: str = "float32", parallel: int = 1, rows_per_shard: int = 1) -> Iterator[Serving]:
    """Resolve where ``run``'s generation runs (see the module docstring) for ``model`` (a stage input with ``path``,
    ``digest`` and ``key``) and keep any server started here running until the block ends.

    ``rows_per_shard``: requests one shard sends (to size the shards in flight for a server pool)."""
    base = Serving(backend=backend, model_path=model.path, model_ref=f"artifact:{model.key}", model_digest=model.digest,
                   served_model_name=served_model_name or "", endpoints=tuple(endpoints), concurrency=concurrency,
                   batch_size=batch_size, dtype=dtype, parallel=parallel)
    with contextlib.ExitStack() as stack:
        if backend == "vllm_server":
            urls = list(endpoints)
            if urls == ["ray"]:   # the servers the cluster's nodes advertise
                from infra.engine.endpoints import discover

                urls = discover(run.ctx)
            if not urls:   # none given: one server for this stage's model, for as long as the stage runs
                from infra.devstack.vllm_server import VLLMServer

                urls = [stack.enter_context(VLLMServer(model.path)).base_url]
                base = replace(base, served_model_name=served_model_name or model.path)
            need = len(urls) * (-(-concurrency // max(1, rows_per_shard)) + 2)   # every window full, +2 queued
            base = replace(base, endpoints=tuple(urls), parallel=max(parallel, need))
        else:   # the model computes in this process: on the stage's thread only (OpenMP, see shards.run_shards)
            base = replace(base, parallel=1)
        yield base

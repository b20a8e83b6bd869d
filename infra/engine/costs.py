"""Cost accounting: what one stage run used (seconds, memory, tokens), and what it cost at the prices in effect.

Measured per stage run by the runner (infra/engine/runner.py), from the start of the stage body (after the key's lock is
held: waiting for another run is not work) to just before the commit, and recorded in the catalog relation
``stage_costs`` in the same transaction as the ``stage_runs`` record (a failed run records what it used with its
failed record; a cached stage records nothing: it cost nothing). What each column measures:

- ``wall_s``: wall-clock seconds of the stage body.
- ``cpu_s``: CPU seconds (user + system, summed over cores) of this process *and* of the child processes that
  ended and were reaped during the stage (e.g. a vLLM server the stage started and stopped), from
  ``resource.getrusage`` deltas. Process-wide: every thread counts, so if two stages ever run at once in one
  process each is charged the other's CPU too (the factory runs its stages one after another).
- ``gpu_s``: wall seconds during which this process used a CUDA GPU, times the number of GPUs it used: a device
  counts when the stage allocated memory on it (its peak allocation during the stage exceeds what was held at the
  start). 0 when torch is not loaded or no CUDA device is used. A GPU used only by another process (a vLLM
  server) is not seen here: its CPU shows in ``cpu_s`` once it exits, its GPU time does not.
- ``peak_rss_mb``: the highest resident set size of this process seen during the stage: a sampling thread reads
  ``VmRSS`` from ``/proc/self/status`` every ``interval_s`` (0.1 s) plus once at start and end. ``ru_maxrss`` /
  ``VmHWM`` are lifetime peaks of the process, so they cannot give one stage's peak; a spike shorter than the
  interval may be missed. NULL where ``/proc`` is missing. Child processes are not included.
- ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start, summed
  over devices (tensor memory, including tensors already held at the start, e.g. a model an earlier stage loaded;
  the caching allocator's reserve is not counted). NULL without CUDA. Checked on an H200: a CPU-only stage in a
  process holding CUDA tensors records gpu_s 0, a matmul stage gpu_s = its wall seconds.
- ``tokens_in`` / ``tokens_out`` / ``forward_tokens``: counted by the stage itself for the rows this run
  computed (rows reused from other runs' shards or copied from earlier artifacts cost nothing here):
  generate and evaluate: ``tokens_in`` = prompt tokens, ``tokens_out`` = generated tokens; score:
  ``tokens_in`` = the teacher and student sequences it scores, ``tokens_out`` = 0. ``forward_tokens`` = tokens
  pushed through a model forward: prompt + generated for generation (nominal: one prompt per sample, prefix
  caching not subtracted), the full sequence length for each model a scorer runs. Stages without a model
  (ingest, filter, train_teacher with no training phase) record 0. The training stages record what their TRL
  trainers counted (``rlt_core.training``: ``TrainResult.tokens``; train_teacher sums its SFT and GRPO phases):
  SFT (teacher warm-up, distill): ``tokens_in`` = the non-padding tokens of the batches trained on
  (transformers' ``num_input_tokens_seen``), ``tokens_out`` = 0, ``forward_tokens`` = ``tokens_in`` (one
  forward each; the backward and activation-checkpointing recomputation are not counted); GRPO: ``tokens_in`` =
  the prompt tokens of every generated sequence, ``tokens_out`` = the generated tokens, ``forward_tokens`` =
  prompt + completion once for each pass over them (generation, the training forward, the reference model's
  log-probs when beta > 0) plus the RLT reward's teacher and student forwards (as score counts them); see
  ``rlt_core.training.grpo.grpo_token_counts``. Trainers report their counts when they finish: a run that fails
  inside a training call records NULL for that call (NULL altogether if nothing was counted before).

Money (``cost``) is computed when the row is written, from the prices in effect then (``costs:`` in the recipe,
overridden by ``RLT_PRICE_*`` environment variables, see :class:`CostsConfig`), and the prices are kept in the row
(``prices_json``), so a night's cost never changes afterwards; re-price with your own SQL from the seconds and
token columns. ``cost`` is NULL when no price is set. Nothing here imports torch: it is only asked about when a
stage already loaded it.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from infra.engine.context import RunContext

log = logging.getLogger("rlt")

NO_MODEL_STAGES = frozenset({"ingest", "filter"})   # no model forward: tokens are 0, not unknown
TOKEN_FIELDS = ("tokens_in", "tokens_out", "forward_tokens")
ENV_PRICES = {"gpu_hour": "RLT_PRICE_GPU_HOUR", "cpu_hour": "RLT_PRICE_CPU_HOUR",
              "per_million_input_tokens": "RLT_PRICE_PER_MTOK_IN",
              "per_million_output_tokens": "RLT_PRICE_PER_MTOK_OUT"}
ENV_PRICE_BOTH = "RLT_PRICE_PER_MTOK"   # sets input and output token prices at once (the split ones win)
ENV_CURRENCY = "RLT_PRICE_CURRENCY"


# ------------------------------------------------------------------------------------------------ prices
class CostsConfig(BaseModel):
    """Prices for the cost figures (``costs:`` in a recipe). Every price is off unless set; a set price adds its
    share: GPU-hours x ``gpu_hour`` + CPU core-hours x ``cpu_hour`` + input/output tokens x their price per
    million (set only the ones that apply: token prices for hosted endpoints, hour prices for your machines).
    Environment variables win over the recipe (the machine's rates are the operator's): ``RLT_PRICE_GPU_HOUR``,
    ``RLT_PRICE_CPU_HOUR``, ``RLT_PRICE_PER_MTOK_IN``, ``RLT_PRICE_PER_MTOK_OUT`` (``RLT_PRICE_PER_MTOK`` sets
    both), ``RLT_PRICE_CURRENCY``. Not a stage config: no key depends on it, changing it recomputes nothing."""

    model_config = ConfigDict(extra="forbid")
    gpu_hour: Optional[float] = Field(default=None, ge=0, description="per GPU-hour (gpu_s / 3600)")
    cpu_hour: Optional[float] = Field(default=None, ge=0, description="per CPU core-hour (cpu_s / 3600)")
    per_million_input_tokens: Optional[float] = Field(default=None, ge=0, description="per 1M tokens_in")
    per_million_output_tokens: Optional[float] = Field(default=None, ge=0, description="per 1M tokens_out")
    currency: str = Field(default="USD", min_length=1, max_length=8)

    @property
    def priced(self) -> bool:
        return any(getattr(self, k) is not None for k in ENV_PRICES)


def resolve_prices(recipe: CostsConfig | Mapping[str, Any] | None = None,
                   env: Mapping[str, str] | None = None) -> CostsConfig:
    """The prices in effect: the recipe's ``costs:`` section, overridden field by field by the environment."""
    env = os.environ if env is None else env
    base = recipe if isinstance(recipe, CostsConfig) else CostsConfig.model_validate(dict(recipe or {}))
    update: dict[str, Any] = {}
    both = env.get(ENV_PRICE_BOTH, "").strip()
    if both:
        update["per_million_input_tokens"] = update["per_million_output_tokens"] = _price(ENV_PRICE_BOTH, both)
    for fname, var in ENV_PRICES.items():
        raw = env.get(var, "").strip()
        if raw:
            update[fname] = _price(var, raw)
    if env.get(ENV_CURRENCY, "").strip():
        update["currency"] = env[ENV_CURRENCY].strip()
    return CostsConfig.model_validate({**base.model_dump(), **update}) if update else base


def _price(var: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r}: expected a number (a price, e.g. 2.5)") from None
    if v < 0 or v != v:
        raise ValueError(f"{var}={raw!r}: a price must be a number >= 0")
    return v


def money(row: Mapping[str, Any], prices: CostsConfig) -> float | None:
    """What a cost row cost at ``prices`` (None when no price is set); an unmeasured (NULL) quantity adds 0."""
    if not prices.priced:
        return None
    parts = ((row.get("gpu_s"), prices.gpu_hour, 3600.0), (row.get("cpu_s"), prices.cpu_hour, 3600.0),
             (row.get("tokens_in"), prices.per_million_input_tokens, 1e6),
             (row.get("tokens_out"), prices.per_million_output_tokens, 1e6))
    return sum(float(q) / unit * p for q, p, unit in parts if q is not None and p is not None)


# ------------------------------------------------------------------------------------------------ measurement
def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and of its reaped children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb() -> float | None:
    """This process's resident set size now (MiB), from /proc/self/status; None where there is no /proc."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024.0   # kB
    except OSError:
        return None
    return None


class PeakRSS:
    """A daemon thread sampling ``rss_mb()`` every ``interval_s`` until ``stop()``; ``peak`` is the highest seen."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak: float | None = rss_mb()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _see(self) -> None:
        v = rss_mb()
        if v is not None and (self.peak is None or v > self.peak):
            self.peak = v

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._see()

    def start(self) -> "PeakRSS":
        if self.peak is not None:   # no /proc: nothing to sample
            self._thread = threading.Thread(target=self._loop, name="rlt-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._see()
        return self.peak


def _cuda() -> Any:
    """torch.cuda if torch is already loaded and CUDA is initialised in this process, else None (never imports)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda
    except Exception:   # a broken CUDA setup must not fail a stage's bookkeeping
        return None
    return None


@dataclass
class Usage:
    """What one stage run used (see the module docstring for what each figure means)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None


@dataclass
class Meter:
    """Measures a stage run from ``start()`` to ``stop()``; ``stop()`` may be called more than once (the first
    result is kept, so the commit and a later failure see the same figures)."""

    interval_s: float = 0.1
    _t0: float = 0.0
    _cpu0: float = 0.0
    _gpu0: dict[int, int] = field(default_factory=dict)
    _rss: PeakRSS | None = None
    result: Usage | None = None

    def start(self) -> "Meter":
        self._t0, self._cpu0 = time.perf_counter(), cpu_seconds()
        self._rss = PeakRSS(self.interval_s).start()
        cuda = _cuda()
        if cuda is not None:
            for d in range(cuda.device_count()):
                self._gpu0[d] = cuda.memory_allocated(d)
                cuda.reset_peak_memory_stats(d)
        return self

    def stop(self) -> Usage:
        if self.result is not None:
            return self.result
        wall = time.perf_counter() - self._t0
        u = Usage(wall_s=wall, cpu_s=max(0.0, cpu_seconds() - self._cpu0),
                  peak_rss_mb=self._rss.stop() if self._rss is not None else None)
        cuda = _cuda()
        if cuda is not None:   # CUDA may have been initialised during the stage: devices unseen at start held 0
            peaks = {d: cuda.max_memory_allocated(d) for d in range(cuda.device_count())}
            used = [d for d, p in peaks.items() if p > self._gpu0.get(d, 0)]
            u.gpu_s = wall * len(used)
            u.peak_gpu_mb = sum(peaks.values()) / 2**20
        self.result = u
        return u


# ------------------------------------------------------------------------------------------------ the record
def add_tokens(usage: dict[str, int], **counts: float | None) -> None:
    """Add token counts (``tokens_in``, ``tokens_out``, ``forward_tokens``) into ``usage`` (a stage run's or a
    shard's). ``forward_tokens`` defaults to in + out (generation: prompt + generated)."""
    unknown = set(counts) - set(TOKEN_FIELDS)
    if unknown:
        raise ValueError(f"unknown token count(s) {sorted(unknown)}; expected {list(TOKEN_FIELDS)}")
    if "forward_tokens" not in counts:
        counts["forward_tokens"] = (counts.get("tokens_in") or 0) + (counts.get("tokens_out") or 0)
    for k, v in counts.items():
        if v is not None:
            usage[k] = usage.get(k, 0) + int(v)


def cost_row(ctx: RunContext, stage: str, label: str, key: str, status: str, usage: Usage, tokens: Mapping[str, int],
             rows: int | None, prices: CostsConfig | None = None) -> dict[str, Any]:
    """The ``stage_costs`` record of one stage run."""
    from infra.engine.context import host

    prices = prices if prices is not None else resolve_prices(getattr(ctx, "prices", None))
    tok: dict[str, int | None]
    if tokens:
        tok = {k: int(tokens.get(k, 0)) for k in TOKEN_FIELDS}
    elif stage in NO_MODEL_STAGES:
        tok = dict.fromkeys(TOKEN_FIELDS, 0)
    else:   # a model stage that counts no tokens (training): unknown, not zero
        tok = dict.fromkeys(TOKEN_FIELDS, None)
    row = dict(run_id=ctx.run_id, stage=stage, label=label, artifact_key=key, status=status,
               wall_s=round(usage.wall_s, 4), cpu_s=round(usage.cpu_s, 4), gpu_s=round(usage.gpu_s, 4),
               peak_rss_mb=None if usage.peak_rss_mb is None else round(usage.peak_rss_mb, 1),
               peak_gpu_mb=None if usage.peak_gpu_mb is None else round(usage.peak_gpu_mb, 1),
               rows=rows, host=host(), **tok)
    row["cost"] = money(row, prices)
    row["currency"] = prices.currency if prices.priced else None
    row["prices_json"] = json.dumps(prices.model_dump(exclude_none=True), sort_keys=True) if prices.priced else None
    return row


def measured_row(run: Any, status: str, rows: int | None = None) -> dict[str, Any] | None:
    """The cost record of ``run`` (a StageRun whose body the runner measured), or None if it was not measured.
    Never raises: accounting must not fail a stage."""
    meter = getattr(run, "meter", None)
    if meter is None:
        return None
    try:
        return cost_row(run.ctx, run.stage.name, run.label, run.key, status, meter.stop(), run.usage, rows)
    except Exception as exc:
        log.warning("%s: cost accounting skipped: %s", run.stage.name, exc)
        return None


def record(run: Any, status: str) -> None:
    """Append ``run``'s cost record on its own (a failed run, or one whose commit another run made first).
    Never raises."""
    row = measured_row(run, status)
    if row is None:
        return
    try:
        run.ctx.catalog.append("stage_costs", [row])
    except Exception as exc:
        log.warning("%s: could not record its cost: %s", run.stage.name, exc)

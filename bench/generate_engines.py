"""Generation engines side by side: Hugging Face (our batched sampler) vs vLLM server, tokens/s per batch size.

    python -m bench.generate_engines                       # SmolLM2-135M, batch 1/8/64, 128 new tokens
    python -m bench.generate_engines --batch-sizes 1,8 --max-new-tokens 64 --engines hf
    python -m bench.generate_engines --vllm-env VLLM_CPU_NUM_OF_RESERVED_CPU=0   # let vLLM compute on every core

Batch size B means B requests in one ``generate`` call: the HF backend runs them as one batch, the vLLM client
sends them with B concurrent connections (the server batches them). Throughput = completion tokens / wall time of
the call, after one warm-up call per engine. Both engines stop at EOS, so the completion lengths differ a little;
tokens/s already normalises for that. The vLLM column is skipped when ``.venv-vllm`` is missing
(``scripts/setup_vllm.sh``). Numbers are only comparable within one run on one machine.

Writes its record (bench/record.py) to ``bench/results/generate_engines[-<variant>].json`` (a model that is not a
builtin, e.g. a tiny test model: a temp folder unless ``--results``). The last line is the ratio
vLLM/HF tokens/s at the largest batch size (n/a when the vLLM column was skipped).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rlt_core.generation import Generator, GenRequest, SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRun:
    engine: str
    batch_size: int
    requests: int
    completion_tokens: int
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else float("nan")


def make_requests(tokenizer, n: int, seed: int = 0) -> list[GenRequest]:
    """``n`` chat-templated prompts (builtin arithmetic problems, asking for a worked answer), seeds seed..seed+n-1."""
    from rlt_core.builtin_problems import generate as builtin_problems

    problems = builtin_problems("arithmetic", n, seed=seed)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Solve step by step: {p['question']}"}],
                                             tokenize=False, add_generation_prompt=True) for p in problems]
    return [GenRequest(f"bench-{seed}-{i}", prompt, seed + i) for i, prompt in enumerate(prompts)]


def time_generator(gen: Generator, requests: Sequence[GenRequest], sampling: SamplingConfig,
                   batch_size: int) -> EngineRun:
    """One timed ``generate`` call over ``requests``."""
    t0 = time.perf_counter()
    results = gen.generate(requests, sampling)
    wall = time.perf_counter() - t0
    return EngineRun(gen.name, batch_size, len(results), sum(r.completion_tokens for r in results), wall)


def run_engine(make_gen, tokenizer, batch_sizes: Sequence[int], sampling: SamplingConfig) -> list[EngineRun]:
    """``make_gen(batch_size) -> Generator``; warms up once, then times each batch size."""
    warm = make_requests(tokenizer, 2, seed=10_000)
    make_gen(2).generate(warm, sampling.model_copy(update={"max_new_tokens": 8}))
    runs = []
    for b in batch_sizes:
        run = time_generator(make_gen(b), make_requests(tokenizer, b, seed=b), sampling, b)
        log.info("%s batch %d: %d tokens in %.1fs = %.1f tok/s", run.engine, b, run.completion_tokens, run.wall_s,
                 run.tokens_per_s)
        runs.append(run)
    return runs


def bench_hf(model_path: str, dtype: str, batch_sizes: Sequence[int], sampling: SamplingConfig) -> list[EngineRun]:
    import torch

    from rlt_core.generation import HFGenerator
    from rlt_core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype={"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype])
    return run_engine(lambda b: HFGenerator(model, tok, batch_size=b), tok, batch_sizes, sampling)


def bench_vllm(model_path: str, batch_sizes: Sequence[int], sampling: SamplingConfig,
               env: dict[str, str]) -> tuple[list[EngineRun], float]:
    """Runs and the server start-up time (s)."""
    from infra.devstack.vllm_server import VLLMServer
    from rlt_core.modeling import load_tokenizer

    tok = load_tokenizer(model_path)
    t0 = time.perf_counter()
    with VLLMServer(model_path, env=env) as server:
        startup = time.perf_counter() - t0
        runs = run_engine(lambda b: server.generator(max_concurrency=b), tok, batch_sizes, sampling)
    return runs, startup


def engine_ratios(runs: Sequence[EngineRun], batch_sizes: Sequence[int]) -> dict[int, float]:
    """vllm tok/s / hf tok/s per batch size measured by both."""
    by = {(r.engine, r.batch_size): r for r in runs}
    engines = list(dict.fromkeys(r.engine for r in runs))
    if len(engines) != 2:
        return {}
    return {b: by[engines[1], b].tokens_per_s / by[engines[0], b].tokens_per_s
            for b in batch_sizes if (engines[0], b) in by and (engines[1], b) in by}


def format_table(runs: Sequence[EngineRun], batch_sizes: Sequence[int]) -> str:
    engines = list(dict.fromkeys(r.engine for r in runs))
    by = {(r.engine, r.batch_size): r for r in runs}
    lines = ["| batch | " + " | ".join(f"{e} tok/s" for e in engines) + " |",
             "|---" * (len(engines) + 1) + "|"]
    for b in batch_sizes:
        cells = [f"{by[e, b].tokens_per_s:.1f}" if (e, b) in by else "-" for e in engines]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    ratios = engine_ratios(runs, batch_sizes)
    if ratios:  # the ratio is the number that transfers between machines
        lines.append("")
        lines.append(f"ratio {engines[1]}/{engines[0]}: " + ", ".join(f"b{b}={r:.2f}x" for b, r in ratios.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model reference (infra.models)")
    ap.add_argument("--batch-sizes", default="1,8,64", help="comma-separated, e.g. 1,8,64")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--engines", default="hf,vllm", help="subset of hf,vllm")
    ap.add_argument("--hf-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="HF model dtype (vLLM serves bfloat16)")
    ap.add_argument("--hf-threads", type=int, default=0, help="torch threads for HF (0: torch's default)")
    ap.add_argument("--vllm-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the vLLM server (repeatable)")
    ap.add_argument("--json", help="also write the runs as JSON here")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    session = record.start_from_args("generate_engines", ap, args, smoke=not args.model.startswith("builtin:"),
                                     argv=argv, ignore=("json",))

    from infra.devstack.vllm_server import vllm_available
    from infra.models import resolve_model

    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    engines = set(args.engines.split(","))
    sampling = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    path = resolve_model(args.model).path
    runs: list[EngineRun] = []
    extra: dict[str, float] = {}
    if "hf" in engines:
        if args.hf_threads:
            import torch

            torch.set_num_threads(args.hf_threads)
        runs += bench_hf(path, args.hf_dtype, batch_sizes, sampling)
    if "vllm" in engines:
        if vllm_available():
            env = dict(kv.split("=", 1) for kv in args.vllm_env)
            vruns, extra["vllm_startup_s"] = bench_vllm(path, batch_sizes, sampling, env)
            runs += vruns
        else:
            log.warning("vLLM column skipped: no vLLM interpreter (run scripts/setup_vllm.sh or set RLT_VLLM_PYTHON)")
    print(format_table(runs, batch_sizes))  # the bench's report is its stdout
    if extra:
        print(", ".join(f"{k}={v:.1f}" for k, v in extra.items()))
    ratios = engine_ratios(runs, batch_sizes)
    numbers = {"runs": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in runs], **extra,
               "sampling": sampling.model_dump(), "hf_dtype": args.hf_dtype, "hf_threads": args.hf_threads,
               "vllm_env": args.vllm_env, "ratios": {str(b): r for b, r in ratios.items()}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**numbers, "load_avg_1m": os.getloadavg()[0]}, fh, indent=2)
    top = max(ratios) if ratios else max(batch_sizes)
    value = ratios.get(top)
    record.finish(session, numbers, record.Ratio(
        f"ratio vllm/hf tok/s at batch {top}", value, None,
        line=f"ratio vllm/hf tok/s at batch {top}: " + (f"{value:.2f}x" if value is not None else
                                                         "n/a (the vLLM column was skipped)")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

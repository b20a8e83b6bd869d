"""Generate-stage throughput vs the bare engine on the same prompts, and peak memory at 1x vs 10x problems.

    python bench/generate.py                 # builtin SmolLM2, 16 problems x K=2, 64 new tokens
    python bench/generate.py --tiny          # tiny random model (seconds)

Prints, last: stage tok/s / bare-engine tok/s (target >= 0.9, includes storage + manifests), and the peak RSS
ratio of a 10x run over a 1x run (target ~1.0: shards stream, memory must not grow with the problem count).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.generate")


def _model_dir(tiny: bool) -> str:
    from infra.models import builtin_tokenizer_dir, resolve_model

    if not tiny:
        return resolve_model("builtin:smollm2-135m-instruct").path
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm

    d = os.path.join(tempfile.gettempdir(), "rlt-bench-tiny-model")
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        tok = load_tokenizer(builtin_tokenizer_dir())
        tiny_causal_lm(tok).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _setup(root: str, model_dir: str, n: int):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.tasks.helpers import setup

    return setup(root, model_dir, n)


def run_pair(model_dir: str, n: int, k: int, tokens: int, batch: int) -> dict:
    """Bare engine and the stage over the same prompts, seeds and sampling, in this process."""
    from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
    from rlt_core.prompts import format_teacher_prompt
    from tasks import generate
    from tasks.models import model_and_tokenizer

    ctx, problems, teacher = _setup(tempfile.mkdtemp(prefix="rlt-bench-"), model_dir, n)
    cfg = generate.GenerateConfig(num_samples=k, sampling=SamplingConfig(temperature=0.7, max_new_tokens=tokens),
                                  shard_size=max(1, n // 4), part_size=batch, batch_size=batch, split="all")
    model, tok = model_and_tokenizer(model_dir)
    rows = ctx.manifest.sql("SELECT problem_id, question, solution FROM data_problems").to_pylist()
    gcd = generate.gen_config_digest(cfg, teacher.key)
    reqs = [GenRequest(generate.explanation_id(r["problem_id"], j, gcd),
                       format_teacher_prompt(tok, r["question"], r["solution"], cfg.style),
                       generate.sample_seed(cfg.seed, r["problem_id"], j)) for r in rows for j in range(k)]
    gen = HFGenerator(model, tok, batch)
    gen.generate(reqs[:1], cfg.sampling)  # warm-up
    t0 = time.perf_counter()
    bare = gen.generate(reqs, cfg.sampling)
    bare_s = time.perf_counter() - t0
    bare_tok = sum(r.completion_tokens for r in bare)
    t0 = time.perf_counter()
    ref = generate.run(ctx, cfg, problems, teacher)
    stage_s = time.perf_counter() - t0
    stage_tok = int(ctx.manifest.sql(f"SELECT sum(completion_tokens) AS t FROM data_explanations "
                                 f"WHERE artifact_key = '{ref.key}'").to_pylist()[0]["t"])
    return {"rows": ref.num_rows, "bare_tok_s": bare_tok / bare_s, "stage_tok_s": stage_tok / stage_s,
            "bare_s": bare_s, "stage_s": stage_s, "same_tokens": bare_tok == stage_tok}


def peak_rss_child(model_dir: str, n: int, k: int, tokens: int) -> float:
    """Run the stage on n problems in a fresh process; return its peak RSS in MiB."""
    code = (f"import sys, resource, json; sys.path.insert(0, {os.getcwd()!r}); sys.argv=['x'];"
            f"import bench.generate as b; b._child({model_dir!r}, {n}, {k}, {tokens})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _child(model_dir: str, n: int, k: int, tokens: int) -> None:
    from rlt_core.generation import SamplingConfig
    from tasks import generate

    ctx, problems, teacher = _setup(tempfile.mkdtemp(prefix="rlt-bench-mem-"), model_dir, n)
    cfg = generate.GenerateConfig(num_samples=k, sampling=SamplingConfig(max_new_tokens=tokens), shard_size=8,
                                  part_size=8, batch_size=8, split="all")
    generate.run(ctx, cfg, problems, teacher)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random model instead of SmolLM2")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mem-problems", type=int, default=20, help="1x size for the memory check (tiny model)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = _model_dir(args.tiny)
    res = run_pair(model_dir, args.problems, args.k, args.tokens, args.batch)
    print(json.dumps(res, indent=1))
    if not args.skip_memory:
        tiny = _model_dir(True)
        m1 = peak_rss_child(tiny, args.mem_problems, 2, 16)
        m10 = peak_rss_child(tiny, args.mem_problems * 10, 2, 16)
        print(f"peak RSS: {m1:.0f} MiB at {args.mem_problems} problems, {m10:.0f} MiB at {args.mem_problems * 10}")
        print(f"memory ratio 10x/1x: {m10 / m1:.3f} (target ~1.0)")
    print(f"throughput ratio stage/bare-engine: {res['stage_tok_s'] / res['bare_tok_s']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()

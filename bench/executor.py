"""Executor overhead (Ray vs local) and shard throughput with 1 vs 2 local Ray nodes, in one run.

    python bench/executor.py            # builtin SmolLM2 teacher + student, shards of about a minute on one core
    python bench/executor.py --tiny     # tiny random model, shards of a second or two (dispatch overhead; plumbing)

A local stack with a Ray head and two 1-CPU worker nodes is started (`rlt stack up --ray-nodes 2`: the Prefect
server the workers report to, token authentication), then generate + score run four times on the same problems,
each in a fresh interpreter and a fresh data root (a local folder: every node is this host):

  1. local, 1 thread      the baseline: today's in-process executor with torch on one thread (OMP_NUM_THREADS=1),
                          what one 1-CPU Ray node gives a shard;
  2. ray, 1 node          every shard pinned to node_a (resources {node_a: 1});
  3. ray, 2 nodes         shards spread over node_a and node_b;
  4. local, 2 threads     today's default on this 2-core machine, for the record.

Prints "throughput: 2 nodes / 1 node = S", then last "executor overhead: ray 1 node / local 1 thread = R (target
<= 1.1 for shards of a minute or more)", and checks that every trial committed the same artifact keys and ids.
Writes its record (bench/record.py) to ``bench/results/executor.json`` (``--tiny``: a temp folder unless
``--results``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

from infra.engine.runner import run_stage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.executor")


def trial(root: str, model: str, executor: dict, problems: int, k: int, shard_size: int, max_new_tokens: int) -> dict:
    """One generate + score, timed (in a child process: python bench/executor.py --trial ...)."""
    from infra.engine.context import RunContext
    from tasks import generate, ingest, score
    from tests.tasks.helpers import base_teacher

    ctx = RunContext(root, tracking=False, executor=executor)
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": problems, "seed": 0},
                                                heldout_fraction=0.0))["problems"]
    teacher = base_teacher(ctx, model, probs)
    t0 = time.perf_counter()
    ex = run_stage(generate.STAGE, ctx, generate.GenerateConfig(num_samples=k, shard_size=shard_size, batch_size=shard_size * k,
                                                   sampling={"temperature": 0.7, "max_new_tokens": max_new_tokens}),
                      probs, teacher)
    t1 = time.perf_counter()
    sc = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=model, shard_size=shard_size * k), ex, teacher)
    t2 = time.perf_counter()
    ids = sorted(r["explanation_id"] for r in ctx.catalog.rows(
        "SELECT explanation_id FROM lake.data.explanations WHERE artifact_key = ?", [ex.key]))
    nodes = ctx.catalog.rows("SELECT stage, node, count(*) AS n, sum(num_rows) AS rows_ FROM shards_latest "
                             "GROUP BY ALL ORDER BY ALL")
    return {"generate_s": t1 - t0, "score_s": t2 - t1, "total_s": t2 - t0, "keys": [ex.key, sc.key], "ids": ids,
            "nodes": nodes, "shards": -(-problems // shard_size)}


def _child(args, name: str, executor: dict, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    root = tempfile.mkdtemp(prefix=f"bench-executor-{name.replace(' ', '-').replace(',', '')}-")
    cmd = [sys.executable, __file__, "--trial", json.dumps({
        "root": root, "model": args.model, "executor": executor, "problems": args.problems, "k": args.k,
        "shard_size": args.shard_size, "max_new_tokens": args.max_new_tokens})]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"trial {name} failed:\n{out.stderr[-4000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    log.info("%-16s generate %6.1f s  score %6.1f s  total %6.1f s  shards by node %s", name, res["generate_s"],
             res["score_s"], res["total_s"], [(n["stage"], n["node"] or "-", n["n"]) for n in res["nodes"]])
    return res


def _tiny_model(out: str) -> str:
    """A tiny random-weight model with the SmolLM2 tokenizer (as the tests build it)."""
    from infra.models import builtin_tokenizer_dir
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm

    tok = load_tokenizer(builtin_tokenizer_dir())
    model = tiny_causal_lm(tok, seed=0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help="tiny random model: shards of a second or two")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=4, help="problems per shard")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    from bench import record

    record.add_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.trial:
        logging.getLogger().setLevel(logging.WARNING)
        print(json.dumps(trial(**json.loads(args.trial)), default=str))
        return 0
    session = record.start_from_args("executor", ap, args, smoke=args.tiny)
    if args.tiny:
        args.model = _tiny_model(tempfile.mkdtemp(prefix="bench-executor-tiny-"))
        args.problems, args.shard_size, args.max_new_tokens = 16, 2, 32
    from infra.devstack import stack

    services = tempfile.mkdtemp(prefix="bench-executor-stack-")
    t0 = time.perf_counter()
    env = stack.up(services, stack.StackConfig(ray_nodes=2, ray_cpus_per_node=1))
    log.info("stack with 2 Ray nodes up in %.1f s", time.perf_counter() - t0)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("PREFECT_", "RAY_", "RLT_RAY"))})
    try:
        ray1 = {"kind": "ray", "resources": {s: {"resources": {"node_a": 1}} for s in ("generate", "score")}}
        runs = {"local, 1 thread": _child(args, "local 1 thread", {}, 1),
                "ray, 1 node": _child(args, "ray 1 node", ray1, None),
                "ray, 2 nodes": _child(args, "ray 2 nodes", {"kind": "ray"}, None),
                "local, 2 threads": _child(args, "local 2 threads", {}, None)}
    finally:
        stack.down(services)
        from tests.infra.devstack.services_fixtures import drop_postgres_cluster

        drop_postgres_cluster(services, stack.load_state(services)["postgres"]["cluster_dir"])
    base = runs["local, 1 thread"]
    for name, r in runs.items():
        if (r["keys"], r["ids"]) != (base["keys"], base["ids"]):
            raise SystemExit(f"{name} committed other keys or ids than local: {r['keys']} vs {base['keys']}")
    per_shard = base["generate_s"] / base["shards"]
    print(f"\n{'trial':<18}{'generate s':>12}{'score s':>10}{'total s':>10}")
    for name, r in runs.items():
        print(f"{name:<18}{r['generate_s']:>12.1f}{r['score_s']:>10.1f}{r['total_s']:>10.1f}")
    print(f"\nworkload: {args.problems} problems x K={args.k}, {base['shards']} generate shards of {args.shard_size} "
          f"problems, {args.max_new_tokens} new tokens, model {args.model}; local generate shard ~{per_shard:.0f} s "
          "on one thread")
    print(f"same artifact keys and explanation ids in all {len(runs)} trials")
    overhead = runs["ray, 1 node"]["total_s"] / base["total_s"]
    throughput = runs["ray, 1 node"]["total_s"] / runs["ray, 2 nodes"]["total_s"]
    vs_local2 = runs["ray, 2 nodes"]["total_s"] / runs["local, 2 threads"]["total_s"]
    print(f"throughput: ray 2 nodes / ray 1 node = {throughput:.2f}x")
    print(f"ray 2 nodes / local 2 threads = {vs_local2:.3f}")
    numbers = {"problems": args.problems, "k": args.k, "shard_size": args.shard_size, "shards": base["shards"],
               "max_new_tokens": args.max_new_tokens, "model": "tiny" if args.tiny else args.model,
               "local_generate_shard_s": per_shard,
               "trials": {name: {k: r[k] for k in ("generate_s", "score_s", "total_s", "wall_s", "nodes")}
                          for name, r in runs.items()},
               "same_keys_and_ids": True, "overhead": overhead, "throughput_2_over_1": throughput,
               "ray2_over_local2": vs_local2}
    record.finish(session, numbers, record.Ratio(
        "executor overhead: ray 1 node / local 1 thread", overhead, "<= 1.1",
        line=f"executor overhead: ray 1 node / local 1 thread = {overhead:.3f} "
             "(target <= 1.1 for shards of a minute or more)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

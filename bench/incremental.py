"""Incremental nights: generate + score on a source grown by 10%, against the same stages from scratch.

    python bench/incremental.py                     # builtin SmolLM2 teacher + student, 100 -> 110 problems, K=2
    python bench/incremental.py --tiny              # tiny random model (a minute; checks the plumbing)
    python bench/incremental.py --base 200 --growth 0.1 --max-new-tokens 64

Three measured nights, each in its own fresh interpreter (model loading counts, as it does in a nightly run):
  1. "yesterday": the base source into data root A (timed, for the record);
  2. "tonight, incremental": the grown source into root A, where yesterday's artifacts are donors (infra/engine/reuse.py);
  3. "tonight, from scratch" (the baseline): the grown source into an empty root B.
Each night is ingest -> teacher registration (no training phase: the base model is the teacher) -> generate ->
score, the timed part being generate + score. Prints, last, "incremental / full generate+score: R (target <=
0.15 for 10% growth)" and checks that night 2 and night 3 committed the same artifact keys and explanation ids.
Writes its record (bench/record.py) to ``bench/results/incremental.json`` (``--tiny``: a temp folder unless
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
log = logging.getLogger("bench.incremental")


def _source(path: str, n: int) -> str:
    """The first n builtin countdown problems as a JSON Lines source (a bigger n is a superset of a smaller one)."""
    from rlt_core.builtin_problems import generate

    with open(path, "w") as f:
        for p in generate("countdown", n, seed=0):
            f.write(json.dumps({"question": p["question"], "solution": p["solution"]}) + "\n")
    return path


def night(root: str, source: str, model: str, k: int, max_new_tokens: int) -> dict:
    """One night's generate + score, timed (runs in a child process: python bench/incremental.py --night ...)."""
    from infra.catalog.artifacts import digest
    from infra.engine.context import RunContext
    from tasks import generate, ingest, score
    from tests.tasks.helpers import base_teacher

    ctx = RunContext(root, tracking=False)
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": source}, heldout_fraction=0.0))["problems"]
    teacher = base_teacher(ctx, model, probs)
    t0 = time.perf_counter()
    ex = run_stage(generate.STAGE, ctx, generate.GenerateConfig(num_samples=k, shard_size=8, batch_size=8,
                                                   sampling={"temperature": 0.7, "max_new_tokens": max_new_tokens}),
                      probs, teacher)
    t1 = time.perf_counter()
    sc = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=model, shard_size=32), ex, teacher)
    t2 = time.perf_counter()
    ids = sorted(r["explanation_id"] for r in ctx.catalog.rows(
        "SELECT explanation_id FROM lake.data.explanations WHERE artifact_key = ?", [ex.key]))
    stats = {n: json.loads(ctx.catalog.artifact(r.key)["stats_json"]) for n, r in (("generate", ex), ("score", sc))}
    return {"generate_s": t1 - t0, "score_s": t2 - t1, "total_s": t2 - t0, "keys": [ex.key, sc.key],
            "rows": [ex.num_rows, sc.num_rows], "ids_digest": digest(ids),
            "reused": {n: (s.get("rows_reused"), s.get("rows_computed")) for n, s in stats.items()}}


def _child(root: str, source: str, model: str, k: int, max_new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--night", root, source, model, str(k),
                          str(max_new_tokens)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"night in {root} failed (rc {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=100, help="problems in yesterday's source")
    ap.add_argument("--growth", type=float, default=0.1, help="tonight's source = base * (1 + growth)")
    ap.add_argument("--k", type=int, default=2, help="explanations per problem")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="tiny random model instead of SmolLM2")
    ap.add_argument("--night", nargs=5, help=argparse.SUPPRESS)
    from bench import record

    record.add_arguments(ap)
    args = ap.parse_args()
    if args.night:
        logging.disable(logging.INFO)
        root, source, model, k, mnt = args.night
        print(json.dumps(night(root, source, model, int(k), int(mnt))))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    session = record.start_from_args("incremental", ap, args, smoke=args.tiny)
    from bench.generate import _load, _model_dir

    model = _model_dir(args.tiny)
    grown = round(args.base * (1 + args.growth))
    with tempfile.TemporaryDirectory(prefix="rlt-bench-incremental-") as tmp:
        small, big = _source(f"{tmp}/base.jsonl", args.base), _source(f"{tmp}/grown.jsonl", grown)
        log.info("model %s, K=%d, %d new tokens; %d -> %d problems; %s", model, args.k, args.max_new_tokens,
                 args.base, grown, _load())
        first = _child(f"{tmp}/A", small, model, args.k, args.max_new_tokens)
        log.info("night 1 (%d problems, root A):        generate %.1fs + score %.1fs = %.1fs", args.base,
                 first["generate_s"], first["score_s"], first["total_s"])
        inc = _child(f"{tmp}/A", big, model, args.k, args.max_new_tokens)
        log.info("night 2 (%d problems, root A, reuse): generate %.1fs + score %.1fs = %.1fs  reused/computed %s",
                 grown, inc["generate_s"], inc["score_s"], inc["total_s"], inc["reused"])
        full = _child(f"{tmp}/B", big, model, args.k, args.max_new_tokens)
        log.info("night 2 (%d problems, root B, fresh): generate %.1fs + score %.1fs = %.1fs  reused/computed %s",
                 grown, full["generate_s"], full["score_s"], full["total_s"], full["reused"])
        same = inc["keys"] == full["keys"] and inc["ids_digest"] == full["ids_digest"] and inc["rows"] == full["rows"]
        log.info("same artifact keys and explanation ids as from scratch: %s; %s", same, _load())
        ratio = inc["total_s"] / full["total_s"]
        numbers = {"base": args.base, "grown": grown, "growth": args.growth, "k": args.k,
                   "max_new_tokens": args.max_new_tokens, "tiny": args.tiny,
                   "nights": {name: {k: night_[k] for k in ("generate_s", "score_s", "total_s", "rows", "reused")}
                              for name, night_ in (("first", first), ("incremental", inc), ("full", full))},
                   "same_keys_and_ids": same, "incremental_over_full": {
                       "total": ratio, "generate": inc["generate_s"] / full["generate_s"],
                       "score": inc["score_s"] / full["score_s"]}}
        parts = numbers["incremental_over_full"]
        record.finish(session, numbers, record.Ratio(
            "incremental / full generate+score", ratio, "<= 0.15",
            line=f"incremental / full generate+score: {ratio:.3f} (target <= 0.15 for {args.growth:.0%} growth; "
                 f"generate {parts['generate']:.3f}, score {parts['score']:.3f})"))
        if not same:
            raise SystemExit("the incremental night differs from the from-scratch night")


if __name__ == "__main__":
    main()

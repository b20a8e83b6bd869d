"""Probe: which builtin task puts the 135M student where the RLT method can show (issue 24, question 4)?

    python experiments/task_probe.py                               # 4 tasks x 100 validation items, greedy (~2 min on 2 cores)
    python experiments/task_probe.py --tasks addition-terse --items 200
    python experiments/task_probe.py --tiny --no-record            # plumbing only: a tiny random model (CI)

The regime the method is for: a reference solution that is terse (the answer alone) while the problem needs steps a
small student can follow once they are written out. The experiment needs the base student (and a student distilled
on the answer-only references) inside the 5-60% accuracy band, so that distillation can move it either way. For
each task this evaluates the builtin SmolLM2-135M-Instruct greedily on ``--items`` items of its validation benchmark
(``<task>-validation``: eval-partition problems that are never among the 200 held-out test items, so choosing the task
does not tune on the items the experiment reports; ``--split heldout`` probes the test items instead) (the same prompt as experiments/evidence.py: its short student system prompt, then the boxed instruction and the
question) and reports the accuracy with a 95% bootstrap CI, the share of answers cut at ``--max-new-tokens`` and
whether the task is inside the band. Writes its record (bench/record.py) to ``docs/results/task_probe.json``
(``--results DIR`` elsewhere, ``--no-record`` none; ``--tiny`` runs write to a temp folder).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("experiments.task_probe")

TASKS = ("arithmetic-easy", "arithmetic-easy-terse", "arithmetic-terse", "addition-terse")
BAND = (0.05, 0.60)   # the base student's accuracy band the experiment needs


def probe_task(task: str, items: int, model, tok, cfg: dict, style, split: str = "validation") -> dict:
    """The base student's greedy accuracy on ``items`` items of ``task``'s ``split`` benchmark
    (:func:`evaluate_student`)."""
    from experiments import evidence as ev

    t0 = time.perf_counter()
    res = ev.evaluate_student(model, tok, ev.eval_items({**cfg, "task": task, "eval_items": items}, split), cfg, style,
                              sampled=False)
    acc = res["accuracy"]
    return {"task": task, "split": split, "items": items, "accuracy": acc, "correct": res["correct"],
            "truncated": res["truncated"], "mean_completion_tokens": res["mean_completion_tokens"],
            "in_band": BAND[0] <= acc["mean"] <= BAND[1], "examples": res["examples"][:2],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help="builtin tasks (each has <task>-validation and "
                   "<task>-heldout benchmarks)")
    p.add_argument("--split", choices=["validation", "heldout"], default="validation",
                   help="which benchmark to probe: validation (default: choose the task without touching the test "
                        "items) or heldout (the test items the experiment reports)")
    p.add_argument("--items", type=int, default=100, help="items per task (at most 200)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="a tiny random-weight model (plumbing only)")
    from bench import record

    record.add_arguments(p)
    args = p.parse_args(argv)
    from rlt_core.benchmarks import BUILTIN_BENCHMARKS

    unknown = [t for t in args.tasks if f"{t}-{args.split}" not in BUILTIN_BENCHMARKS]
    if unknown:
        p.error(f"--tasks {unknown}: no {args.split} benchmark; expected tasks among "
                f"{sorted(b.removesuffix('-heldout') for b in BUILTIN_BENCHMARKS if b.endswith('-heldout'))}")
    if not 1 <= args.items <= 200:
        p.error(f"--items {args.items}: expected 1..200 (a builtin benchmark has 200 items)")
    session = record.start_from_args("task_probe", p, args, smoke=args.tiny, argv=argv,
                                     default_folder=record.ROOT / "docs" / "results")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from experiments import evidence as ev

    cfg = dict(ev.PROFILES["smoke" if args.tiny else "full"], eval_max_new_tokens=args.max_new_tokens,
               eval_batch=args.batch)
    style, (tok, make) = ev._style(), ev._tokenizer_and_builder(cfg)
    model = make(None).eval()
    rows = []
    for task in args.tasks:
        row = probe_task(task, args.items, model, tok, cfg, style, args.split)
        a = row["accuracy"]
        log.info("%-22s base accuracy %5.1f%% [%.1f, %.1f] on %d items, %d truncated, %s the %d-%d%% band (%.0f s)",
                 task, 100 * a["mean"], 100 * a["ci95_bootstrap"][0], 100 * a["ci95_bootstrap"][1], row["items"],
                 row["truncated"], "inside" if row["in_band"] else "outside", 100 * BAND[0], 100 * BAND[1],
                 row["seconds"])
        rows.append(row)
    numbers = {"model": "tiny random" if args.tiny else "builtin:smollm2-135m-instruct", "band": list(BAND),
               "split": args.split,
               "max_new_tokens": args.max_new_tokens, "tasks": rows}
    record.write(session, numbers)
    return numbers


if __name__ == "__main__":
    main()

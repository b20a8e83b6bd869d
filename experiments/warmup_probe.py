"""Probe: how much does the teacher's SFT warm-up leave for GRPO to learn from? (docs/results.md, tuning run 3)

    python experiments/warmup_probe.py                          # base teacher, SFT 4 and 8 steps at 2e-5 (~5 min)
    python experiments/warmup_probe.py --warmups 16@5e-5        # the warm-up of the collapsed run 1

For each warm-up (``STEPS@LR``, batch 4, on the experiment's GRPO problems), samples G=4 explanations for 12 other
problems at T=0.7 with :func:`experiments.evidence.teacher_samples` and prints the distinct completions per
prompt, the within-prompt reward std (GRPO's advantage signal: 0 means no gradient), the format-penalty rate and
the mean reward terms. Writes its record (bench/record.py) to ``docs/results/warmup_probe[-<variant>].json``
(``--results DIR`` elsewhere, ``--no-record`` none).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("experiments.warmup_probe")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmups", nargs="+", default=["0@0", "4@2e-5", "8@2e-5"], help="STEPS@LR (0@0: no warm-up)")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--group", type=int, default=4)
    from bench import record

    record.add_arguments(p)
    args = p.parse_args(argv)
    session = record.start_from_args("warmup_probe", p, args, smoke=False, argv=argv,
                                     default_folder=record.ROOT / "docs" / "results")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from experiments import evidence as ev
    from rlt_core.builtin_problems import generate
    from rlt_core.training.sft_teacher import TeacherSFTConfig, train_teacher_sft

    cfg = dict(ev.PROFILES["full"])
    style, (tok, make) = ev._style(), ev._tokenizer_and_builder(cfg)
    pool = generate(cfg["task"], cfg["train_problems"] + args.prompts, 0)
    train, probe = pool[:cfg["train_problems"]], pool[cfg["train_problems"]:]
    student = make(None).eval()
    print(f"{'warm-up':>10s} {'distinct':>9s} {'rwd std':>8s} {'penalty':>8s} {'reward':>8s} {'r_ss':>7s} {'r_kl':>7s}")
    rows_out = []
    for spec in args.warmups:
        steps, lr = int(spec.split("@")[0]), float(spec.split("@")[1])
        teacher = make(None)
        if steps:
            train_teacher_sft(teacher, tok, train, TeacherSFTConfig(
                max_steps=steps, batch_size=4, per_device_batch_size=4, learning_rate=lr, warmup_ratio=0.0,
                max_length=768, style=style, runtime=ev._runtime(0)), tempfile.mkdtemp(prefix="probe_sft_"),
                resume=False)
        t0 = time.perf_counter()
        rows = ev.teacher_samples(teacher.eval(), student, tok, probe, args.group, 777, cfg, style)
        d = ev.group_diversity(rows)
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("has_format_penalty", "reward", "r_ss", "r_kl")}
        print(f"{spec:>10s} {d['distinct_per_problem']:9.2f} {d['within_problem_reward_std']:8.2f} "
              f"{mean['has_format_penalty']:8.0%} {mean['reward']:8.2f} {mean['r_ss']:7.2f} {mean['r_kl']:7.2f}"
              f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows_out.append({"warmup": spec, "steps": steps, "lr": lr, **d, **mean, "seconds": time.perf_counter() - t0,
                         "samples": [{k: r[k] for k in ("problem", "sample", "seed", "reward", "r_ss", "r_kl",
                                                        "has_format_penalty")} for r in rows]})
    record.write(session, {"prompts": args.prompts, "group": args.group, "warmups": rows_out})


if __name__ == "__main__":
    main()

"""RLT reward scoring throughput vs two bare batched forward passes and vs a one-at-a-time loop.

    python bench/reward.py                  # builtin SmolLM2-135M as teacher and student
    python bench/reward.py --tiny           # tiny random models (seconds)

Three timings over the same examples, in this process:

* ``score``: ``RLTReward.score`` end to end (tokenisation, span location, both models, reductions);
* ``bare``: ``model(ids, attention_mask).logits`` for the teacher and the student sequences, in the same
  length-sorted, right-padded batches: what a plain batched scorer runs (target: score/bare throughput >= 0.8);
* ``loop``: how the reference (SakanaAI/RLT) scores: one sequence at a time, full logits, log_softmax over the
  whole vocabulary at every position, then the spans are picked (target: score is >= 3x faster).

Writes its record (bench/record.py: ``bench/results/reward[-<variant>].json``; ``--tiny``: a temp folder unless
``--results`` names one). The last lines printed are the loop speed-up and, last, the score/bare ratio, by process
CPU time (robust on a shared machine) and by wall time.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.reward")

_FILLER = ("We check each step against the target before moving on.", "This keeps every intermediate value exact.",
           "Multiplying first is safer because the numbers stay integers.", "Let me verify the arithmetic again.",
           "So the partial result is consistent with the question.", "Another option would overshoot the target.")


def make_examples(n: int, expl_sentences: int, seed: int, k: int = 1) -> tuple[list[str], list[str], list[str]]:
    """n (question, solution, completion) triples, k per builtin problem, with synthetic explanations."""
    from rlt_core.builtin_problems import generate

    rng = random.Random(seed)
    m = -(-n // k)
    problems = generate("countdown", (m + 1) // 2, seed) + generate("arithmetic", m // 2, seed)
    qs, ss, cs = [], [], []
    for p in [p for p in problems[:m] for _ in range(k)][:n]:
        lines = [rng.choice(_FILLER) for _ in range(expl_sentences)] + p["solution"].split("\n")
        qs.append(p["question"])
        ss.append(p["solution"])
        cs.append("\n\n".join(lines) + "\n\n<|end_of_explanation|>")
    return qs, ss, cs


def bare_forward(model, sequences: list[list[int]], batch_size: int, pad_id: int) -> None:
    """The plain batched forward passes the scorer cannot avoid (same batches as the scorer)."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = [sequences[i] for i in order[start:start + batch_size]]
            length = max(map(len, rows))
            ids = torch.full((len(rows), length), pad_id)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, seq in enumerate(rows):
                ids[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
            _ = model(input_ids=ids, attention_mask=mask).logits


def reference_style_loop(reward, qs, ss, cs) -> list[float]:
    """One sequence at a time with full-vocabulary log_softmax at every position, as the reference does."""
    import torch
    import torch.nn.functional as F

    from rlt_core.spans import build_examples

    cfg = reward.config
    examples = build_examples(reward.tokenizer, qs, ss, cs, cfg.prompt_style, cfg.not_matched_penalty)
    out = []
    with torch.inference_mode():
        for ex in examples:
            t = torch.tensor([ex.teacher_ids])
            t_lp = F.log_softmax(reward.teacher(input_ids=t).logits[:, :-1] / cfg.teacher_temperature, -1)
            t_lp = t_lp.gather(-1, t[:, 1:, None])[0, :, 0]
            s = torch.tensor([ex.student_ids])
            s_lp = F.log_softmax(reward.student(input_ids=s).logits[:, :-1] / cfg.student_temperature, -1)
            s_lp = s_lp.gather(-1, s[:, 1:, None])[0, :, 0]
            d = t_lp[ex.teacher_span[0] - 1:ex.teacher_span[1] - 1] - s_lp[
                ex.student_thought_span[0] - 1:ex.student_thought_span[1] - 1]
            sol = s_lp[ex.solution_span[0] - 1:ex.solution_span[1] - 1]
            out.append((sol.mean() + 0.01 * sol.min() - 3 * d.mean() - 0.03 * d.max()).item())
    return out


def _timed(fn):
    """(value, wall seconds, process CPU seconds). CPU time is far less disturbed by other processes."""
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random models instead of SmolLM2-135M")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model reference (teacher = student)")
    ap.add_argument("--n", type=int, default=16, help="explanations to score")
    ap.add_argument("--sentences", type=int, default=8, help="filler sentences per explanation")
    ap.add_argument("--k", type=int, default=1, help="explanations per question (GRPO group / score-stage K)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats; the best is kept")
    ap.add_argument("--no-loop", action="store_true", help="skip the one-at-a-time baseline")
    ap.add_argument("--seed", type=int, default=0)
    from bench import record

    record.add_arguments(ap)
    return ap, ap.parse_args(argv)


def _models(args):
    import torch

    from infra.models import builtin_tokenizer_dir, resolve_model
    from rlt_core.modeling import load_causal_lm, load_tokenizer, tiny_causal_lm

    if args.tiny:
        tok = load_tokenizer(builtin_tokenizer_dir())
        teacher, student = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    else:
        path = resolve_model(args.model).path
        tok = load_tokenizer(path)
        teacher, student = load_causal_lm(path), load_causal_lm(path)
    dtype = getattr(torch, args.dtype)
    return teacher.to(dtype), student.to(dtype), tok


def _measure(args, reward, qs, ss, cs, examples) -> tuple[dict[str, tuple[float, float]], Optional[float]]:
    """Best (wall, cpu) seconds per method over interleaved repeats (the machine may be shared), and the largest
    |reward(score) - reward(loop)| seen (None without the loop)."""
    pad = reward.tokenizer.pad_token_id or 0
    timings: dict[str, list[tuple[float, float]]] = {"score": [], "bare": [], "loop": []}
    worst: Optional[float] = None
    for _ in range(args.repeats):
        _, *t = _timed(lambda: (bare_forward(reward.teacher, [e.teacher_ids for e in examples], args.batch_size, pad),
                                bare_forward(reward.student, [e.student_ids for e in examples], args.batch_size, pad)))
        timings["bare"].append(tuple(t))
        scored, *t = _timed(lambda: reward.score(qs, ss, cs))
        timings["score"].append(tuple(t))
        if not args.no_loop:
            looped, *t = _timed(lambda: reference_style_loop(reward, qs, ss, cs))
            timings["loop"].append(tuple(t))
            diff = max(abs(a.reward - b) for a, b in zip(scored, looped))
            worst = diff if worst is None else max(worst, diff)
            log.info("max |reward(score) - reward(loop)| = %.2e", diff)
    return {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in timings.items() if v}, worst


def main(argv=None) -> None:
    from bench import record

    parser, args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    session = record.start_from_args("reward", parser, args, smoke=args.tiny, argv=argv)
    # On a shared 2-core machine, spinning OpenMP workers slow torch down many-fold when other processes run;
    # sleeping waiters keep the timings meaningful. Must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from rlt_core.reward import RewardConfig, RLTReward
    from rlt_core.spans import build_examples

    torch.set_num_threads(args.threads)
    teacher, student, tok = _models(args)
    reward = RLTReward(teacher, student, tok, RewardConfig(batch_size=args.batch_size))
    qs, ss, cs = make_examples(args.n, args.sentences, args.seed, args.k)
    examples = build_examples(tok, qs, ss, cs, reward.config.prompt_style)
    n_tokens = sum(len(e.teacher_ids) + len(e.student_ids) for e in examples)
    log.info("%d explanations (%d per question), %d teacher+student tokens (mean explanation %.0f tokens), "
             "batch %d, %d threads, %s", args.n, args.k, n_tokens,
             sum(e.teacher_span[1] - e.teacher_span[0] for e in examples) / args.n, args.batch_size, args.threads,
             args.dtype)
    reward.score(qs[:2], ss[:2], cs[:2])  # warm-up (and the one-off probes)
    best, worst = _measure(args, reward, qs, ss, cs, examples)
    for name, (wall, cpu) in best.items():
        log.info("%-5s wall %7.2f s  cpu %7.2f s  %6.2f explanations/s  %7.0f tokens/s (wall)", name, wall, cpu,
                 args.n / wall, n_tokens / wall)
    ratio = [best["bare"][j] / best["score"][j] for j in (1, 0)]
    numbers = {"n": args.n, "k": args.k, "batch_size": args.batch_size, "threads": args.threads, "dtype": args.dtype,
               "tiny": args.tiny, "tokens": n_tokens,
               "mean_explanation_tokens": sum(e.teacher_span[1] - e.teacher_span[0] for e in examples) / args.n,
               "seconds": {k: {"wall": w, "cpu": c} for k, (w, c) in best.items()},
               "score_explanations_per_s": args.n / best["score"][0],
               "score_over_bare": {"cpu": ratio[0], "wall": ratio[1]}, "max_abs_reward_diff_vs_loop": worst}
    if "loop" in best:
        speedup = [best["loop"][j] / best["score"][j] for j in (1, 0)]
        numbers["loop_speedup"] = {"cpu": speedup[0], "wall": speedup[1]}
        log.info("score vs one-at-a-time loop speedup: %.2fx by CPU time, %.2fx by wall time (target >= 3x)", *speedup)
    record.finish(session, numbers, record.Ratio(
        "score/bare throughput (wall)", ratio[1], ">= 0.8",
        line="score/bare throughput ratio: %.2f by CPU time, %.2f by wall time (target >= 0.8)" % tuple(ratio)))


if __name__ == "__main__":
    main()

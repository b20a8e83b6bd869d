"""Experiment (not CI): does the RLT reward rise when GRPO trains a small teacher on CPU?

    python bench/teacher_rl.py --minutes 12 --out .scratch/bench/teacher_rl
    python bench/teacher_rl.py --tiny --steps 3     # plumbing check with tiny random models (about a minute)

Teacher and student are both the builtin SmolLM2-135M-Instruct (``--tiny``: random tiny models). Problems are
countdown puzzles with worked solutions (``rlt_core.builtin_problems``). An optional short SFT warm-up in the
teacher format comes first (the paper's phase 1; the solution doubles as the explanation, the reference
fallback), then GRPO with the RLT reward until ``--steps`` or the ``--minutes`` budget runs out.

Writes to ``--out``: ``history.json`` (per-step mean/min/max of every reward term), ``samples.txt``
(completions with their terms), ``reward_terms.png`` (mean reward and each term per step) and prints a summary:
mean reward over the first and last quarter of the steps and the least-squares slope with its standard error,
so "the reward rises" is a statement with an error bar, not a reading of a noisy curve. Its ratio, printed last, is
that slope over its standard error (a t statistic against "flat"; >= 2: the reward rose). Writes its record
(bench/record.py) to ``bench/results/teacher_rl[-<variant>].json`` (``--tiny``: a temp folder unless ``--results``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.teacher_rl")

PLOTTED = ("reward", "r_ss", "r_kl", "format_penalty", "answer_logprob_mean", "kl_mean", "n_explanation_tokens")


def _problems(n: int, seed: int) -> list[dict]:
    try:
        from rlt_core.builtin_problems import generate
    except ImportError:  # the generator lives in another module of the project; keep the bench self-contained
        generate = None
    if generate is not None:
        return [{"question": p["question"], "solution": p["solution"]} for p in generate("countdown", n, seed)]
    import random

    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(1, 30)
        rows.append({"question": f"Using the numbers [{a}, {b}, {c}], create an equation that equals {a * b + c}.",
                     "solution": f"First, {a} * {b} = {a * b}.\nThen {a * b} + {c} = {a * b + c}.\n"
                                 f"So the equation is {a} * {b} + {c} = {a * b + c}"})
    return rows


def _models(tiny: bool, teacher_path: str | None):
    from infra.models import builtin_tokenizer_dir, resolve_model
    from rlt_core.modeling import load_causal_lm, load_tokenizer, tiny_causal_lm

    if tiny:
        tok = load_tokenizer(builtin_tokenizer_dir())
        return tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1), tok
    path = resolve_model("builtin:smollm2-135m-instruct").path
    tok = load_tokenizer(path)
    return load_causal_lm(teacher_path or path).train(), load_causal_lm(path), tok


def _style(short: bool):
    from rlt_core.prompts import PromptStyle

    if not short:
        return PromptStyle()
    # Same tags and layout as the paper; only the two ~250-token system prompts are shortened (CPU time).
    return PromptStyle(teacher_system_prompt="You are given a question and its solution. Explain step by step how "
                                             "to reach the solution, inside the explanation tags.",
                       student_system_prompt="Think step by step inside the thought tags, then give the solution.")


def run(args) -> dict:
    from rlt_core.reward import RewardConfig
    from rlt_core.training.common import LoraSettings, RuntimeSettings
    from rlt_core.training.grpo import TeacherGRPOConfig, train_teacher_grpo
    from rlt_core.training.sft_teacher import TeacherSFTConfig, train_teacher_sft

    os.makedirs(args.out, exist_ok=True)
    teacher, student, tok = _models(args.tiny, args.teacher)
    style = _style(args.short_prompts)
    rows = _problems(args.problems, args.seed)
    rt = RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=args.seed,
                         save_steps=args.save_steps)
    lora = LoraSettings(r=16, alpha=32) if args.lora else None
    t0 = time.perf_counter()
    if args.sft_steps:
        sft = TeacherSFTConfig(max_steps=args.sft_steps, batch_size=4, per_device_batch_size=4,
                               learning_rate=args.sft_lr, warmup_ratio=0.0, style=style, lora=lora, runtime=rt)
        res = train_teacher_sft(teacher, tok, rows, sft, os.path.join(args.out, "sft"), resume=False,
                                log_metric=lambda n, v, s: log.info("sft step %d loss %.4f", s, v)
                                if n == "sft/loss" else None)
        log.info("SFT warm-up: %d steps, loss %.4f, %.0f s", res.steps, res.final_loss or math.nan,
                 time.perf_counter() - t0)
    history: dict[int, dict[str, float]] = {}
    samples: list[str] = []
    deadline = time.time() + args.minutes * 60 if args.minutes else None

    def log_metric(name: str, value: float, step: int) -> None:
        history.setdefault(step, {})[name] = value
        if name == "rlt/step_seconds":  # last metric of a step: print progress, enforce the time budget
            h = history[step]
            log.info("step %d  reward %.3f  r_ss %.3f  r_kl %.3f  fmt %.2f  expl_tokens %.0f  %.1f s", step,
                     h.get("rlt/reward/mean", math.nan), h.get("rlt/r_ss/mean", math.nan),
                     h.get("rlt/r_kl/mean", math.nan), h.get("rlt/format_penalty/mean", math.nan),
                     h.get("rlt/n_explanation_tokens/mean", math.nan), value)
            _dump(args.out, history, samples)

    def log_text(name: str, text: str, step: int) -> None:
        samples.append(f"=== step {step}\n{text}")

    steps = args.steps or 10_000  # with only a time budget, the Budget callback ends training
    grpo = TeacherGRPOConfig(num_generations=args.group, prompts_per_step=args.prompts_per_step,
                             per_device_batch_size=args.group * args.prompts_per_step, learning_rate=args.lr,
                             beta=args.beta, max_completion_length=args.max_new_tokens, max_prompt_length=2048,
                             max_steps=steps, sync_ref_model=not args.lora, lora=lora, samples_per_log=2,
                             sample_every=5, runtime=rt)
    reward_cfg = RewardConfig(batch_size=args.group * args.prompts_per_step, prompt_style=style)
    t1 = time.perf_counter()
    train_teacher_grpo(teacher, student, tok, rows, grpo, reward_cfg, os.path.join(args.out, "grpo"), log_metric,
                       log_text, resume=False, callbacks=[_budget_callback(deadline)])
    summary = _summary(history, time.perf_counter() - t1, vars(args))
    _dump(args.out, history, samples, summary)
    plot_reward_terms(history, os.path.join(args.out, "reward_terms.png"), summary)
    return summary


def _budget_callback(deadline: float | None):
    """A TrainerCallback that stops training at the end of the step during which the time budget ran out."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if deadline is not None and time.time() > deadline:
                control.should_training_stop = True

    return Budget()


def _series(history: dict, key: str) -> tuple[list[int], list[float]]:
    steps = sorted(s for s in history if key in history[s])
    return steps, [history[s][key] for s in steps]


def _slope(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and its standard error."""
    n = len(xs)
    if n < 3:
        return math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return b, math.sqrt(resid / (n - 2) / sxx)


def _summary(history: dict, seconds: float, cfg: dict) -> dict:
    out = {"config": cfg, "grpo_seconds": round(seconds, 1), "steps": len(history)}
    xs, times = _series(history, "rlt/step_seconds")
    out["step_seconds_median"] = sorted(times)[len(times) // 2] if times else None
    for key in ("grpo/entropy", "grpo/frac_reward_zero_std", "grpo/grad_norm", "grpo/kl"):
        _, ys = _series(history, key)  # zero-std groups or ~0 entropy mean no learning signal at all
        if ys:
            out[key + " (mean over steps)"] = sum(ys) / len(ys)
    for term in PLOTTED:
        xs, ys = _series(history, f"rlt/{term}/mean")
        if not ys:
            continue
        q = max(1, len(ys) // 4)
        slope, se = _slope(xs, ys)
        out[term] = {"first_quarter_mean": sum(ys[:q]) / q, "last_quarter_mean": sum(ys[-q:]) / q,
                     "slope_per_step": slope, "slope_se": se}
    return out


def _dump(folder: str, history: dict, samples: list[str], summary: dict | None = None) -> None:
    with open(os.path.join(folder, "history.json"), "w") as f:
        json.dump({str(k): v for k, v in sorted(history.items())}, f, indent=1)
    with open(os.path.join(folder, "samples.txt"), "w") as f:
        f.write("\n\n".join(samples))
    if summary is not None:
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)


def plot_reward_terms(history: dict, path: str, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(8, 2.2 * len(PLOTTED)), sharex=True)
    for ax, term in zip(axes, PLOTTED):
        xs, mean = _series(history, f"rlt/{term}/mean")
        _, lo = _series(history, f"rlt/{term}/min")
        _, hi = _series(history, f"rlt/{term}/max")
        if not xs:
            continue
        ax.fill_between(xs, lo, hi, alpha=0.2, label="min..max")
        ax.plot(xs, mean, marker=".", label="mean")
        k = max(1, len(xs) // 8)
        smooth = [sum(mean[max(0, i - k + 1):i + 1]) / len(mean[max(0, i - k + 1):i + 1]) for i in range(len(mean))]
        ax.plot(xs, smooth, label=f"mean, running avg {k}")
        s = summary.get(term, {})
        ax.set_title(f"{term}: slope {s.get('slope_per_step', math.nan):+.4f} ± {s.get('slope_se', math.nan):.4f}"
                     " per step", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("GRPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from bench import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".scratch/bench/teacher_rl")
    p.add_argument("--tiny", action="store_true", help="tiny random models (plumbing check)")
    p.add_argument("--steps", type=int, default=0, help="GRPO steps (0: until --minutes runs out)")
    p.add_argument("--minutes", type=float, default=12.0, help="GRPO wall-time budget (0: no budget)")
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--group", type=int, default=4, help="G, completions per prompt")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--teacher", default=None, help="teacher checkpoint folder (e.g. a previous run's sft/model)")
    p.add_argument("--sft-steps", type=int, default=8, help="teacher-format SFT warm-up steps first (0: none)")
    p.add_argument("--sft-lr", type=float, default=2e-5)
    p.add_argument("--short-prompts", action=argparse.BooleanOptionalAction, default=True,
                   help="short system prompts (same tags/layout) to fit CPU time")
    p.add_argument("--save-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    record.add_arguments(p)
    args = p.parse_args(argv)
    if not args.steps and not args.minutes:
        p.error("give --steps or --minutes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    session = record.start_from_args("teacher_rl", p, args, smoke=args.tiny, argv=argv)
    summary = run(args)
    numbers = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(numbers, indent=1))
    print(f"plot: {os.path.join(args.out, 'reward_terms.png')}")
    reward = summary.get("reward", {})
    slope, se = reward.get("slope_per_step", math.nan), reward.get("slope_se", math.nan)
    t = slope / se if se and math.isfinite(slope) and math.isfinite(se) else None
    record.finish(session, numbers, record.Ratio(
        "reward slope per step / its standard error", t, ">= 2",
        line=f"reward slope per step / its standard error: {'n/a' if t is None else f'{t:.2f}'} "
             f"(slope {slope:+.4f} +- {se:.4f} per step over {summary['steps']} steps; target >= 2: the reward rose)"))


if __name__ == "__main__":
    main()

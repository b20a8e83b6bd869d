"""Benchmark: the cost of one teacher GRPO step with the RLT reward, against TRL's GRPOTrainer with a trivial reward.

    python bench/grpo_step.py                      # builtin SmolLM2-135M teacher and student (a few minutes)
    python bench/grpo_step.py --tiny --steps 2     # plumbing check with tiny random models (seconds)

Both variants run in this process on the same model, data, lengths and seeds, with TRL 1.16's ``GRPOTrainer``
configured by :func:`rlt_core.training.grpo.make_teacher_grpo_trainer` (the recipe the factory trains with):

* ``baseline``: the reward function is trivial (minus the completion length) plus **one student forward pass** over
  the student-format sequences the RLT reward would score (``rlt_core.logprobs.token_logprobs`` on the same spans);
* ``rlt``: the RLT reward (:class:`rlt_core.reward.RLTReward`: a teacher forward for r_KL and the student forward).

The learning rate is 0 by default, so both variants generate exactly the same completions at every step (same
seed, same weights): the comparison is not confounded by one run drifting to longer explanations. The optimizer
still runs (the step costs the same as with any learning rate).

Each step is split, by timing the trainer's own methods, into: ``generate`` (``GRPOTrainer._generate``),
``reference`` (no-grad log-prob passes: the reference model / LoRA adapters off), ``reward_teacher``,
``reward_student``, ``reward_other`` (tokenising, spans), ``scoring_other`` (the rest of
``_generate_and_score_completions``: advantages, padding), ``policy_forward`` (the loss forward with grad),
``loss`` (the rest of ``compute_loss``), ``backward`` and ``optimizer`` (the rest of the step). Prints the table
and, last, ``ratio = rlt / baseline`` (median seconds per measured step); writes ``grpo_step.json`` to ``--out`` and
its record (bench/record.py) to ``bench/results/grpo_step[-<variant>].json`` (``--tiny``: a temp folder unless
``--results``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.grpo_step")

PARTS = ("generate", "reference", "reward_teacher", "reward_student", "reward_other", "scoring_other",
         "policy_forward", "loss", "backward", "optimizer")


class StepClock:
    """Accumulates seconds per named part for the current optimizer step (nested parts are subtracted out)."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._stack: list[list[float]] = []  # per open timer: [start, seconds of timed children]

    @contextlib.contextmanager
    def part(self, name: str):
        self._stack.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            start, children = self._stack.pop()
            total = time.perf_counter() - start
            self.current[name] += total - children  # own time only
            if self._stack:
                self._stack[-1][1] += total

    def wrap(self, obj, attr: str, name):
        """Time ``obj.attr`` (an instance method) as part ``name`` (a str, or a callable choosing it per call)."""
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            with self.part(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)

        setattr(obj, attr, timed)

    def close_step(self, seconds: float) -> None:
        row = dict(self.current)
        row["optimizer"] = max(0.0, seconds - sum(row.values()))  # what no timer saw: optimizer step, callbacks
        row["total"] = seconds
        row["completion_tokens"] = self.completion_tokens
        self.steps.append(row)
        self.current, self.completion_tokens = defaultdict(float), 0

    completion_tokens = 0  # generated tokens this step (the two variants must match: same completions)


def _baseline_reward(reward, clock: StepClock):
    """Trivial reward (minus the completion's length in characters / 1000) plus one student forward pass over the
    same student-format sequences and spans the RLT reward scores: TRL's cost floor for "a reward that reads the
    student"."""
    from rlt_core.logprobs import scoring_mode, token_logprobs
    from rlt_core.spans import build_examples

    cfg = reward.config

    def baseline_reward(prompts, completions, **kwargs):
        examples = build_examples(reward.tokenizer, kwargs["question"], kwargs["solution"], list(completions),
                                  cfg.prompt_style, cfg.not_matched_penalty, prompts=list(prompts),
                                  max_length=cfg.max_length)
        pad = reward.tokenizer.pad_token_id or 0
        with clock.part("reward_student"), scoring_mode(reward.student):
            token_logprobs(reward.student, [ex.student_ids for ex in examples],
                           [list(range(*ex.student_thought_span)) + list(range(*ex.solution_span)) for ex in examples],
                           cfg.student_temperature, cfg.batch_size, pad, cfg.logprob_dtype == "float32",
                           reward._plan(reward.student))
        return [-len(c) / 1000.0 for c in completions]

    baseline_reward.__name__ = "baseline_reward"
    return baseline_reward


def run_variant(variant: str, args, rows, style) -> list[dict[str, float]]:
    import torch
    from transformers import TrainerCallback

    import rlt_core.reward as reward_mod
    from bench.teacher_rl import _models
    from rlt_core.reward import RewardConfig
    from rlt_core.training.common import LoraSettings, RuntimeSettings
    from rlt_core.training.grpo import TeacherGRPOConfig, make_teacher_grpo_trainer

    torch.manual_seed(args.seed)
    teacher, student, tok = _models(args.tiny, None)
    tok.padding_side = "left"
    n = args.group * args.prompts_per_step
    rt = RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=args.seed, save_steps=10_000)
    cfg = TeacherGRPOConfig(num_generations=args.group, prompts_per_step=args.prompts_per_step,
                            per_device_batch_size=n, learning_rate=args.lr, beta=args.beta,
                            max_completion_length=args.max_new_tokens, max_prompt_length=2048,
                            max_steps=args.warmup + args.steps, sync_ref_model=False,
                            lora=LoraSettings(r=16, alpha=32) if args.lora else None, samples_per_log=0, runtime=rt)
    clock = StepClock()

    class Steps(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            clock.close_step(time.perf_counter() - self.t0)

    out = tempfile.mkdtemp(prefix=f"grpo_step_{variant}_", dir=args.out)
    trainer, reward, _, _ = make_teacher_grpo_trainer(teacher, student, tok, rows, cfg,
                                                          RewardConfig(batch_size=n, prompt_style=style), out,
                                                          callbacks=[Steps()])
    if variant == "baseline":  # same trainer, same args: only the reward function differs
        trainer.reward_funcs = [_baseline_reward(reward, clock)]
    clock.wrap(trainer, "_generate", "generate")
    clock.wrap(trainer, "_calculate_rewards", "reward_other")
    calculate = trainer._calculate_rewards

    def count_tokens(inputs, prompts, completions, completion_ids_list, *a, **k):
        clock.completion_tokens += sum(len(ids) for ids in completion_ids_list)
        return calculate(inputs, prompts, completions, completion_ids_list, *a, **k)

    trainer._calculate_rewards = count_tokens
    clock.wrap(trainer, "_generate_and_score_completions", "scoring_other")
    clock.wrap(trainer, "_get_per_token_logps_and_entropies",
               lambda *a, **k: "policy_forward" if torch.is_grad_enabled() else "reference")
    clock.wrap(trainer, "compute_loss", "loss")
    clock.wrap(trainer, "training_step", "backward")  # own time = backward (+ Trainer bookkeeping)
    original = reward_mod.token_logprobs

    def timed_logprobs(model, *a, **k):
        with clock.part("reward_teacher" if model is reward.teacher else "reward_student"):
            return original(model, *a, **k)

    reward_mod.token_logprobs = timed_logprobs
    try:
        trainer.train()
    finally:
        reward_mod.token_logprobs = original
    steps = clock.steps[args.warmup:]
    log.info("%s: %d measured steps, median %.2f s/step, completion tokens per step %s", variant, len(steps),
             statistics.median(s["total"] for s in steps), [s["completion_tokens"] for s in steps])
    return steps


def _median(steps: list[dict], key: str) -> float:
    return statistics.median(s.get(key, 0.0) for s in steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".scratch/bench/grpo_step")
    p.add_argument("--tiny", action="store_true", help="tiny random models (plumbing check)")
    p.add_argument("--steps", type=int, default=4, help="measured steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured first steps per variant")
    p.add_argument("--group", type=int, default=4, help="G, completions per prompt")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0, help="0 keeps both variants' completions identical")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    from bench import record

    record.add_arguments(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    session = record.start_from_args("grpo_step", p, args, smoke=args.tiny)
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    from bench.teacher_rl import _problems, _style

    rows, style = _problems(64, args.seed), _style(True)
    result = {"config": vars(args), "variants": {}}
    for variant in ("baseline", "rlt"):
        result["variants"][variant] = run_variant(variant, args, rows, style)
    base, ours = result["variants"]["baseline"], result["variants"]["rlt"]
    print(f"{'part (median s/step)':24s} {'baseline':>10s} {'rlt':>10s}")
    for key in (*PARTS, "total", "completion_tokens"):
        print(f"{key:24s} {_median(base, key):10.2f} {_median(ours, key):10.2f}")
    ratio = _median(ours, "total") / _median(base, "total")
    result["ratio"] = ratio
    result["same_completions"] = [s["completion_tokens"] for s in base] == [s["completion_tokens"] for s in ours]
    if not result["same_completions"]:
        log.warning("the variants generated different token counts: the ratio mixes in a length difference")
    with open(os.path.join(args.out, "grpo_step.json"), "w") as f:
        json.dump(result, f, indent=1)
    numbers = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "results", "no_record")},
               "median_s_per_step": {name: {key: _median(steps, key) for key in (*PARTS, "total", "completion_tokens")}
                                     for name, steps in (("baseline", base), ("rlt", ours))},
               "steps": result["variants"], "same_completions": result["same_completions"], "ratio": ratio}
    record.finish(session, numbers, record.Ratio("rlt/baseline (median step)", ratio, "<= 1.3",
                                                 line=f"ratio rlt/baseline (median step): {ratio:.3f}  target <= 1.3"))


if __name__ == "__main__":
    main()

"""Benchmark: training as a gang of ranks on this machine, through rlt_core.training.launch.launch_local.

    python bench/train_scaling.py            # 4-layer random Llama (hidden 256): 20 distillation + 6 GRPO steps
    python bench/train_scaling.py --tiny     # 2-layer hidden-64 models, a few steps: plumbing check (~2 min)

Three gangs train the same job (a distillation phase, then a teacher GRPO phase with the RLT reward), same seeds,
data and global batches, in separate processes started by ``launch_local`` (gloo, fp32):

* ``2x1``: 2 ranks x 1 thread (the global batch split over the ranks);
* ``1x1``: 1 rank x 1 thread, the baseline of the scaling targets;
* ``1x2``: 1 rank x 2 threads: the single-process default, for the record.

Measured from each gang's ``result.json`` (rank 0's clock from the trainer's first step to its last: no process
start-up, model loading or final save): distillation tokens/s (``tokens_in``: the non-padding tokens trained on,
over all ranks) and GRPO optimizer steps/s. Targets on a 2-core machine: 2x1 / 1x1 >= 1.7 for distillation and
>= 1.5 for GRPO (scaling efficiency 0.85 / 0.75). Prints a table, then last the two speed-ups; writes the record
(bench/record.py) to ``bench/results/train_scaling[-<variant>].json`` (``--tiny``: a temp folder unless
``--results``). Run it on a quiet machine: another process on one of the two cores slows the 2-rank gang most.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.train_scaling")

GANGS = (("1x1", 1, 1), ("2x1", 2, 1), ("1x2", 1, 2))   # name, ranks, threads per rank
SFT_TARGET, GRPO_TARGET = 1.7, 1.5


def _make_assets(root: str, tiny: bool) -> dict[str, str]:
    """Teacher/student random Llamas on the SmolLM2 tokenizer, distillation rows of ~``length`` tokens, problems."""
    import random

    from infra.models import builtin_tokenizer_dir
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm
    from rlt_core.prompts import PromptStyle, student_assistant_content

    tok = load_tokenizer(builtin_tokenizer_dir())
    size = dict(hidden=64, layers=2, heads=4) if tiny else dict(hidden=256, layers=4, heads=4)
    paths = {}
    for name, seed in (("teacher", 0), ("student", 1)):
        model = tiny_causal_lm(tok, seed=seed, **size)
        model.generation_config.pad_token_id = tok.pad_token_id
        paths[name] = os.path.join(root, name)
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    rng = random.Random(0)
    style = PromptStyle(teacher_system_prompt="Explain the given solution.", student_system_prompt="Solve it.")
    problems, distill = [], []
    for _ in range(64):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        q, s = f"What is {a} + {b}?", f"{a} + {b} = {a + b}"
        steps = " ".join(f"Step {k}: {rng.randint(1, 999)} plus {rng.randint(1, 999)} is a number." for k in range(12))
        problems.append({"question": q, "solution": s})
        distill.append({"system": style.student_system_prompt, "question": q,
                        "assistant": student_assistant_content(q, s, steps, style)})
    for name, rows in (("problems", problems), ("distill", distill)):
        paths[name] = os.path.join(root, f"{name}.jsonl")
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    chat = [{"role": "system", "content": style.student_system_prompt},
            {"role": "user", "content": distill[0]["question"]},
            {"role": "assistant", "content": distill[0]["assistant"]}]
    text = tok.apply_chat_template(chat, tokenize=False)
    paths["length"] = str(len(tok(text=text, add_special_tokens=False)["input_ids"]))
    return paths


def _job(assets: dict[str, str], out: str, ranks: int, threads: int, args):
    from rlt_core.prompts import PromptStyle
    from rlt_core.reward import RewardConfig
    from rlt_core.training.common import RuntimeSettings
    from rlt_core.training.distill import DistillConfig
    from rlt_core.training.grpo import TeacherGRPOConfig
    from rlt_core.training.launch import DistillPhase, GRPOPhase, Launch, TrainJob

    style = PromptStyle(teacher_system_prompt="Explain the given solution.", student_system_prompt="Solve it.")
    rt = RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, save_steps=10_000)
    distill = DistillConfig(batch_size=args.sft_batch, per_device_batch_size=args.sft_batch // ranks,
                            max_steps=args.sft_steps, learning_rate=1e-4, warmup_ratio=0.0, max_length=512,
                            style=style, runtime=rt)
    completions = args.prompts * args.generations
    grpo = TeacherGRPOConfig(num_generations=args.generations, prompts_per_step=args.prompts,
                             per_device_batch_size=completions // ranks, max_completion_length=args.new_tokens,
                             max_steps=args.grpo_steps, learning_rate=1e-5, sync_ref_model=False,
                             per_sample_seeds=True, samples_per_log=0, runtime=rt)
    return TrainJob(phases=[DistillPhase(model=assets["student"], rows=assets["distill"], config=distill),
                            GRPOPhase(model=assets["teacher"], student=assets["student"], rows=assets["problems"],
                                      config=grpo, reward=RewardConfig(batch_size=8, prompt_style=style))],
                    output_dir=out, launch=Launch(ranks=ranks, threads_per_rank=threads))


def measure(args) -> dict:
    from rlt_core.training.launch import launch_local

    root = tempfile.mkdtemp(prefix="rlt-train-scaling-")
    try:
        assets = _make_assets(root, args.tiny)
        numbers: dict = {"model": "tiny (2 layers, hidden 64)" if args.tiny else "4 layers, hidden 256",
                         "distill_tokens_per_row": int(assets["length"]), "sft_batch": args.sft_batch,
                         "sft_steps": args.sft_steps, "grpo_steps": args.grpo_steps,
                         "grpo_completions_per_step": args.prompts * args.generations,
                         "grpo_new_tokens": args.new_tokens, "gangs": {}}
        for name, ranks, threads in GANGS:
            t0 = time.monotonic()
            res = launch_local(_job(assets, os.path.join(root, name), ranks, threads, args), timeout_s=3600)
            d, g = res["phases"]["distill"], res["phases"]["grpo"]
            numbers["gangs"][name] = {
                "ranks": ranks, "threads_per_rank": threads, "wall_s": round(time.monotonic() - t0, 1),
                "distill_s": d["train_seconds"], "distill_tokens": d["tokens_in"],
                "distill_tokens_per_s": round(d["tokens_in"] / d["train_seconds"], 1),
                "distill_final_loss": d["final_loss"], "grpo_s": g["train_seconds"], "grpo_steps": g["steps_run"],
                "grpo_steps_per_s": round(g["steps_run"] / g["train_seconds"], 5),
                "grpo_tokens_out": g["tokens_out"]}
            log.info("%s: %s", name, numbers["gangs"][name])
        gangs = numbers["gangs"]
        numbers["sft_speedup_2x1_over_1x1"] = round(gangs["2x1"]["distill_tokens_per_s"]
                                                    / gangs["1x1"]["distill_tokens_per_s"], 3)
        numbers["grpo_speedup_2x1_over_1x1"] = round(gangs["2x1"]["grpo_steps_per_s"]
                                                     / gangs["1x1"]["grpo_steps_per_s"], 3)
        numbers["sft_speedup_2x1_over_1x2"] = round(gangs["2x1"]["distill_tokens_per_s"]
                                                    / gangs["1x2"]["distill_tokens_per_s"], 3)
        numbers["grpo_speedup_2x1_over_1x2"] = round(gangs["2x1"]["grpo_steps_per_s"]
                                                     / gangs["1x2"]["grpo_steps_per_s"], 3)
        return numbers
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _table(numbers: dict) -> str:
    rows = [f"{'gang':<5} {'wall s':>7} {'distill s':>9} {'tokens/s':>9} {'loss':>8} {'GRPO s':>8} {'steps/s':>8}"]
    for name, g in numbers["gangs"].items():
        rows.append(f"{name:<5} {g['wall_s']:>7.1f} {g['distill_s']:>9.1f} {g['distill_tokens_per_s']:>9.1f} "
                    f"{g['distill_final_loss']:>8.4f} {g['grpo_s']:>8.1f} {g['grpo_steps_per_s']:>8.4f}")
    rows.append(f"2x1 / 1x2 (for the record): distill {numbers['sft_speedup_2x1_over_1x2']:.2f}x, "
                f"GRPO {numbers['grpo_speedup_2x1_over_1x2']:.2f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models and few steps (plumbing check)")
    ap.add_argument("--sft-steps", type=int, default=None, help="distillation steps (default 20; --tiny 4)")
    ap.add_argument("--sft-batch", type=int, default=None, help="distillation global batch, split over the ranks "
                                                             "(default 16; --tiny 4)")
    ap.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default 6; --tiny 2)")
    ap.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt (G)")
    ap.add_argument("--new-tokens", type=int, default=None, help="GRPO max completion tokens (default 64; --tiny 12)")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    session = record.start_from_args("train_scaling", ap, args, smoke=args.tiny, argv=argv)
    args.sft_steps = args.sft_steps or (4 if args.tiny else 20)
    args.sft_batch = args.sft_batch or (4 if args.tiny else 16)
    args.grpo_steps = args.grpo_steps or (2 if args.tiny else 6)
    args.new_tokens = args.new_tokens or (12 if args.tiny else 64)
    numbers = measure(args)
    print(_table(numbers), flush=True)
    sft, grpo = numbers["sft_speedup_2x1_over_1x1"], numbers["grpo_speedup_2x1_over_1x1"]
    ok = sft >= SFT_TARGET and grpo >= GRPO_TARGET
    line = (f"2 ranks x 1 thread / 1 rank x 1 thread: distillation tokens/s {sft:.2f}x (target >= {SFT_TARGET}), "
            f"GRPO steps/s {grpo:.2f}x (target >= {GRPO_TARGET}): {'pass' if ok else 'FAIL'}")
    record.finish(session, numbers, record.Ratio("2x1 / 1x1 speed-up over target (min of distillation and GRPO)",
                                                 round(min(sft / SFT_TARGET, grpo / GRPO_TARGET), 3), ">= 1.0",
                                                 line=line))


if __name__ == "__main__":
    main()

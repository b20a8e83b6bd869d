"""GPU check of rlt_core's CUDA paths on a small random Llama built on the spot; prints a pass/fail table.

    bash scripts/gpu_check.sh                 # on a GPU machine (installs the carried wheels first)
    python scripts/gpu_check.py --cpu         # the same checks on CPU with a 2-layer model (CI, < 60 s)

Checks, in order (each timed; one failing does not stop the others):

* ``env``: versions, the device, bf16 support;
* ``reward_fp32``: the RLT reward (``RLTReward.score``) on the device in fp32 against the same models on CPU fp32;
* ``reward_bf16``: the reward with both models in bf16 on the device against CPU fp32 (the tolerance is bf16's);
* ``scorer``: the scorer's throughput on the device in bf16 (64 explanations, batch 16), all terms finite;
* ``hf_generate``: rlt_core's HF generator (per-request seeds) on the device: same seeds, same text at batch 1 and 4
  in fp32, and the transformers ``generate`` TRL uses;
* ``sft_step``: one teacher SFT step through TRL's ``SFTTrainer`` (bf16 where supported), weights move, model saved;
* ``grpo_step``: one teacher GRPO step through TRL's ``GRPOTrainer`` with the RLT reward on the live policy.

Needs torch, transformers, accelerate, peft, TRL (and TRL's datasets, pydantic for rlt_core): on the device
machine these travel as wheels in ``.whl/`` (``scripts/gpu_check.sh --prepare`` here); the SmolLM2 tokenizer
travels in ``.whl/tokenizer`` (``--tokenizer`` to point elsewhere). No network.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROBLEMS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}") for a, b in [(12, 30), (3, 4), (7, 8), (21, 21)]]
EXPLANATIONS = ["First add the tens, then the ones.\n\n<|end_of_explanation|>",
                "Add the two numbers.\n\n<|end_of_explanation|>",
                "The sum follows from counting on.", ""]
# bf16 keeps 8 bits of mantissa (~0.4% per value); the reward's terms are means and extremes of log-probs of
# magnitude ~11 (a random model on a 49k vocabulary), log-softmax in fp32. Measured on CPU bf16 against fp32 with the
# check's 4-layer hidden-256 model: |delta| <= 0.005 on reward, r_ss and r_kl; the bound is 10x that, 0.05 + 1%.
BF16_ABS, BF16_REL = 0.05, 0.01
FP32_ABS, FP32_REL = 1e-3, 1e-4   # different kernels (cuBLAS vs CPU), same precision


class Checks:
    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "PASS"
        except Exception as err:   # noqa: BLE001 - the table reports every failure
            status, detail = "FAIL", f"{type(err).__name__}: {err}".splitlines()[0][:160]
            traceback.print_exc()
        self.rows.append({"check": name, "result": status, "seconds": round(time.perf_counter() - t0, 2),
                          "detail": detail})
        print(f"[gpu_check] {name}: {status} ({self.rows[-1]['seconds']} s) {detail}", flush=True)

    def table(self) -> str:
        lines = [f"{'check':<12} {'result':<6} {'seconds':>8}  detail"]
        lines += [f"{r['check']:<12} {r['result']:<6} {r['seconds']:>8.2f}  {r['detail']}" for r in self.rows]
        return "\n".join(lines)


def _tokenizer_dir(arg):
    if arg:
        return arg
    carried = os.path.join(ROOT, ".whl", "tokenizer")
    if os.path.isfile(os.path.join(carried, "tokenizer.json")):
        return carried
    from infra.models import builtin_tokenizer_dir  # here: built from the SmolLM2 package

    return builtin_tokenizer_dir()


def _close(a: float, b: float, abs_tol: float, rel_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= abs_tol + rel_tol * abs(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="dry mode: run every check on CPU with a 2-layer model")
    ap.add_argument("--tokenizer", help="tokenizer folder (default .whl/tokenizer, else the builtin SmolLM2 one)")
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)

    import torch

    from rlt_core.modeling import load_tokenizer, tiny_causal_lm
    from rlt_core.prompts import PromptStyle
    from rlt_core.reward import RewardConfig, RLTReward

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the dry mode", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
    size = dict(hidden=64, layers=2, heads=4) if args.cpu else dict(hidden=256, layers=4, heads=4)
    tok = load_tokenizer(_tokenizer_dir(args.tokenizer))
    style = PromptStyle(teacher_system_prompt="Explain the given solution.", student_system_prompt="Solve it.")
    reward_cfg = RewardConfig(batch_size=4, prompt_style=style)
    work = tempfile.mkdtemp(prefix="rlt-gpu-check-")
    checks = Checks()
    qs, ss = [q for q, _ in PROBLEMS], [s for _, s in PROBLEMS]

    def models(dtype=torch.float32, where=device):
        teacher, student = tiny_causal_lm(tok, seed=0, **size), tiny_causal_lm(tok, seed=1, **size)
        return teacher.to(where, dtype), student.to(where, dtype)

    cpu_ref = RLTReward(*models(where=torch.device("cpu")), tok, reward_cfg).score(qs, ss, EXPLANATIONS)

    def env():
        import accelerate
        import peft
        import transformers
        import trl

        name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        return (f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
                f"peft {peft.__version__}, accelerate {accelerate.__version__}; {name}; bf16 {bf16}")

    def compare(dtype, abs_tol, rel_tol):
        got = RLTReward(*models(dtype), tok, reward_cfg).score(qs, ss, EXPLANATIONS)
        worst = 0.0
        for a, b in zip(got, cpu_ref):
            for term in ("reward", "r_ss", "r_kl"):
                x, y = getattr(a, term), getattr(b, term)
                if not _close(x, y, abs_tol, rel_tol):
                    raise AssertionError(f"{term}: {x:.6f} on {device} vs {y:.6f} on CPU fp32")
                worst = max(worst, abs(x - y))
        return f"max |delta| {worst:.2e} over {len(got)} x 3 terms (tol {abs_tol:g} + {rel_tol:g} rel)"

    def scorer():
        reward = RLTReward(*models(torch.bfloat16 if bf16 else torch.float32), tok,
                           reward_cfg.model_copy(update={"batch_size": 16}))
        n = 64
        t0 = time.perf_counter()
        out = reward.score((qs * 16)[:n], (ss * 16)[:n], (EXPLANATIONS * 16)[:n])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        bad = [b for b in out if not all(math.isfinite(getattr(b, t)) for t in ("reward", "r_ss", "r_kl"))]
        if bad:
            raise AssertionError(f"{len(bad)} of {n} rewards not finite")
        return f"{n / seconds:.1f} explanations/s ({reward.last_forward_tokens} forward tokens)"

    def hf_generate():
        from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig

        model = tiny_causal_lm(tok, seed=0, **size).to(device)
        sampling = SamplingConfig(temperature=0.7, max_new_tokens=16)
        reqs = [GenRequest(f"r{i}", f"<|im_start|>user\n{q}<|im_end|>\n", seed=i) for i, q in enumerate(qs)]
        one = [HFGenerator(model, tok, batch_size=1).generate([r], sampling)[0].text for r in reqs]
        four = [g.text for g in HFGenerator(model, tok, batch_size=4).generate(reqs, sampling)]
        if one != four:
            raise AssertionError("per-request seeds gave other text at batch 4 than at batch 1")
        ids = tok([r.prompt for r in reqs], return_tensors="pt", padding=True).to(device)
        out = model.generate(**ids, do_sample=True, max_new_tokens=16, pad_token_id=tok.pad_token_id)
        return f"4 requests x 16 tokens, batch-invariant; transformers generate -> {tuple(out.shape)}"

    def runtime():
        from rlt_core.training.common import RuntimeSettings

        return RuntimeSettings(use_cpu=device.type == "cpu", bf16=bf16 and device.type == "cuda",
                               gradient_checkpointing=False, seed=0, save_steps=1)

    def sft_step():
        from rlt_core.training.sft_teacher import TeacherSFTConfig, train_teacher_sft

        model = tiny_causal_lm(tok, seed=0, **size)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rows = [{"question": q, "solution": s, "reasoning_trace": "Add them."} for q, s in PROBLEMS]
        cfg = TeacherSFTConfig(batch_size=4, per_device_batch_size=4, max_steps=1, learning_rate=1e-3,
                               warmup_ratio=0.0, max_length=256, style=style, runtime=runtime())
        res = train_teacher_sft(model, load_tokenizer(_tokenizer_dir(args.tokenizer), padding_side="right"), rows,
                                cfg, os.path.join(work, "sft"))
        moved = any(not torch.equal(v.cpu(), before[k]) for k, v in model.state_dict().items())
        if res.steps != 1 or res.final_loss is None or not math.isfinite(res.final_loss) or not moved:
            raise AssertionError(f"steps {res.steps}, loss {res.final_loss}, weights moved {moved}")
        if "model.safetensors" not in os.listdir(res.model_dir):
            raise AssertionError(f"no model.safetensors in {res.model_dir}")
        return f"loss {res.final_loss:.4f}, {res.tokens_in} tokens, model.safetensors saved"

    def grpo_step():
        from rlt_core.training.grpo import TeacherGRPOConfig, train_teacher_grpo

        policy, student = tiny_causal_lm(tok, seed=0, **size), tiny_causal_lm(tok, seed=1, **size).to(device)
        terms = []
        cfg = TeacherGRPOConfig(num_generations=4, prompts_per_step=1, per_device_batch_size=4,
                                max_completion_length=16, max_steps=1, learning_rate=1e-3, sync_ref_model=False,
                                runtime=runtime())
        res = train_teacher_grpo(policy, student, tok, [{"question": q, "solution": s} for q, s in PROBLEMS], cfg,
                                 reward_cfg, os.path.join(work, "grpo"),
                                 log_metric=lambda n, v, s: terms.append((n, v)))
        got = dict(terms)
        if res.steps != 1 or not math.isfinite(got.get("rlt/reward/mean", float("nan"))):
            raise AssertionError(f"steps {res.steps}, logged {sorted(got)[:6]}")
        return (f"reward {got['rlt/reward/mean']:.3f}, r_kl {got['rlt/r_kl/mean']:.3f}, "
                f"{res.tokens_out} completion tokens, step {got.get('rlt/step_seconds', float('nan')):.2f} s")

    checks.run("env", env)
    checks.run("reward_fp32", lambda: compare(torch.float32, FP32_ABS, FP32_REL))
    checks.run("reward_bf16", lambda: compare(torch.bfloat16, BF16_ABS, BF16_REL) if bf16 else "SKIP: no bf16")
    checks.run("scorer", scorer)
    checks.run("hf_generate", hf_generate)
    checks.run("sft_step", sft_step)
    checks.run("grpo_step", grpo_step)
    print(checks.table(), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": str(device), "rows": checks.rows}, f, indent=1)
    failed = [r["check"] for r in checks.rows if r["result"] != "PASS"]
    print(f"gpu_check: {len(checks.rows) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

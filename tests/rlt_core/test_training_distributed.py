"""Training as a gang of ranks (rlt_core.training.launch): the spec, the batch arithmetic, and real 2-process runs.

The slow tests start real ``torch.distributed.run`` gangs (gloo on CPU, fp32) on tiny random Llama models:

* 2 ranks x per-rank batch b against 1 rank x 2b, same seeds and data order: teacher SFT (20 steps), teacher GRPO
  with the RLT reward (5 steps, chained on the SFT result) and distillation (10 steps) agree per step and in their
  final weights, within the tolerances stated at ``LOSS_RTOL``;
* a rank SIGKILLed mid-run: the gang stops within a bound, ``GangFailed`` is one line naming rank, host and signal,
  no result is committed, and the rerun resumes from the last checkpoint, computing only the remaining steps.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from rlt_core.prompts import PromptStyle
from rlt_core.reward import RewardConfig
from rlt_core.training.common import RuntimeSettings
from rlt_core.training.distill import DistillConfig
from rlt_core.training.distributed import derive_batch
from rlt_core.training.grpo import TeacherGRPOConfig, VLLMSettings
from rlt_core.training.launch import DistillPhase, GangFailed, GRPOPhase, Launch, SFTPhase, TrainJob, describe_failures
from rlt_core.training.sft_teacher import TeacherSFTConfig

STYLE = PromptStyle(teacher_system_prompt="Explain the given solution.", student_system_prompt="Solve it.")
PROBLEMS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}", f"Add {a} and {b}: the sum is {a + b}.")
            for a, b in [(12, 30), (3, 4), (7, 8), (21, 21), (5, 9), (10, 11), (2, 2), (40, 2)]]

# Tolerances, 2 ranks x b against 1 rank x 2b (fp32, gloo; the 1-rank gang runs 2 threads). Both runs compute the
# same sums in a different order: DDP all-reduces two half-batch gradients where one process sums one batch, batches
# of b pad to other lengths than batches of 2b (the same masked maths, other GEMM shapes), and thread counts split
# reductions differently. Each op is exact to ~1e-7 relative; measured over 20 SFT / 10 distillation steps (Adam,
# lr 1e-3) the losses differ by <= 1.0e-7 relative and the gradient norms by <= 1.2e-7. 1e-5 relative leaves two
# orders of magnitude for other machines' kernels, while a real mismatch (another batch split, a gradient averaged
# twice or not at all, one sample different) moves a loss by 1e-3 relative or more.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
# GRPO's loss is the mean advantage (0 in exact arithmetic: advantages sum to 0 over each group) plus beta x KL, so
# its logged value is mostly rounding noise of terms of size |A| ~ 1 (measured: <= 4.4e-6 apart); it is compared
# absolutely, at 2e-5. What it trains on is compared tightly: the gradient norm (measured <= 6.2e-7 relative), the
# reward (<= 2.4e-7), the KL to the reference (<= 9.5e-5 relative on values ~1e-5..1e-2: tolerance 1e-3), and the
# completion lengths exactly (the same sampled tokens).
GRPO_LOSS_ATOL = 2e-5
# Final weights: Adam's first step moves every weight with a non-zero gradient by +-lr whatever its size, so a
# gradient entry that is ~0 in exact arithmetic takes its sign from rounding and single weights may differ by up to
# 2 x lr per step (GRPO's advantages cancel in many entries: measured max |w2 - w1| = 4.3e-5 at lr 1e-3). The
# measure is the size of the difference against the size of the training update, ||w2 - w1|| / ||w1 - w0|| over all
# tensors: measured 1.4e-7 (SFT), 4.1e-7 (distillation), 7.6e-5 (GRPO); bound 1e-3.
WEIGHT_REL = 1e-3


def _rt(**over) -> RuntimeSettings:
    base = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, save_steps=5, save_total_limit=2)
    base.update(over)
    return RuntimeSettings(**base)


def _sft(per_device: int, steps: int = 20, **rt) -> TeacherSFTConfig:
    return TeacherSFTConfig(batch_size=4, per_device_batch_size=per_device, max_steps=steps, learning_rate=1e-3,
                            warmup_ratio=0.0, max_length=256, style=STYLE, runtime=_rt(**rt))


def _grpo(per_device: int) -> TeacherGRPOConfig:
    return TeacherGRPOConfig(num_generations=4, prompts_per_step=2, per_device_batch_size=per_device,
                             max_completion_length=12, max_steps=5, learning_rate=1e-3, sync_ref_model=True,
                             ref_model_sync_steps=2, samples_per_log=1, per_sample_seeds=True, runtime=_rt())


def _distill(per_device: int) -> DistillConfig:
    return DistillConfig(batch_size=4, per_device_batch_size=per_device, max_steps=10, learning_rate=1e-3,
                         warmup_ratio=0.0, max_length=256, style=STYLE, runtime=_rt())


# ------------------------------------------------------------------------------------------- spec (fast tests)
def test_derive_batch_keeps_the_global_batch_or_names_the_fields():
    assert derive_batch(16, 2, 4).grad_accum == 2
    assert derive_batch(16, 1, 8).grad_accum == 2   # 1 rank x 2b: the same optimizer step as 2 ranks x b
    with pytest.raises(ValueError, match=r"batch_size=16 is not a multiple of per_device_batch_size\*ranks = 3\*2"):
        derive_batch(16, 2, 3)


def test_job_spec_round_trips_and_refuses_what_it_cannot_do(tmp_path):
    job = TrainJob(phases=[SFTPhase(model="m", rows="r.jsonl", config=_sft(2)),
                           GRPOPhase(student="s", rows="r.jsonl", config=_grpo(2)),
                           DistillPhase(model="m", rows="d.jsonl", config=_distill(2))],
                   output_dir=str(tmp_path), launch=Launch(ranks=2, threads_per_rank=1))
    again = TrainJob.model_validate_json(job.model_dump_json())
    assert again == job and again.phases[1].config.per_sample_seeds
    assert {k: p.grad_accum for k, p in job.batch_plans().items()} == {"sft": 1, "grpo": 2, "distill": 1}
    with pytest.raises(ValueError, match=r"phases\[sft\].config: batch_size=4 is not a multiple of "
                                         r"per_device_batch_size\*ranks = 2\*3.*use a number of ranks dividing 4"):
        job.batch_plans(3)
    grpo_only = TrainJob(phases=[GRPOPhase(model="m", student="s", rows="r", config=_grpo(4))], output_dir="o")
    with pytest.raises(ValueError, match=r"phases\[grpo\].config: prompts_per_step\*num_generations=8 is not a "
                                         r"multiple of per_device_batch_size\*ranks = 4\*4.*per_device_batch_size in "
                                         r"\[1, 2\]"):
        grpo_only.batch_plans(4)
    with pytest.raises(ValueError, match="no sft phase"):
        TrainJob(phases=[GRPOPhase(student="s", rows="r")], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="extra"):
        Launch(rank=2)   # typo
    from rlt_core.training.common import LoraSettings

    with pytest.raises(ValueError, match="LoRA with strategy=fsdp"):
        TrainJob(phases=[SFTPhase(model="m", rows="r", config=TeacherSFTConfig(lora=LoraSettings()))],
                 output_dir=str(tmp_path), launch=Launch(strategy="fsdp"))
    with pytest.raises(ValueError, match="strategy=deepspeed_zero3 needs GPUs"):
        TrainJob(phases=[SFTPhase(model="m", rows="r", config=_sft(1))], output_dir=str(tmp_path),
                 launch=Launch(strategy="deepspeed_zero3"))


def test_strategies_become_trainer_arguments():
    from rlt_core.training.distributed import trainer_args

    assert trainer_args("fsdp", "nccl", 60, 1) == {}   # one rank: the plain single-process path
    assert trainer_args("ddp", "gloo", 60, 2) == {"ddp_backend": "gloo", "ddp_timeout": 60,
                                                  "ddp_find_unused_parameters": False}
    fsdp = trainer_args("fsdp", "nccl", 60, 2, "LlamaDecoderLayer")
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="deepspeed package"):
            trainer_args("deepspeed_zero3", "nccl", 60, 2)


def test_new_grpo_fields_leave_existing_config_dumps_unchanged():
    cfg = TeacherGRPOConfig()
    assert "vllm" not in cfg.model_dump() and "per_sample_seeds" not in cfg.model_dump(mode="json")
    on = TeacherGRPOConfig(vllm=VLLMSettings(mode="server", server_port=8001))
    assert on.model_dump()["vllm"]["mode"] == "server"
    assert TeacherGRPOConfig.model_validate_json(on.model_dump_json()) == on
    args = on.vllm.grpo_args()
    assert args["use_vllm"] and args["vllm_mode"] == "server" and args["vllm_importance_sampling_correction"]
    with pytest.raises(ValueError, match="per_sample_seeds"):
        TeacherGRPOConfig(vllm=VLLMSettings(), per_sample_seeds=True)
    with pytest.raises(ValueError, match="vllm needs GPUs"):
        TeacherGRPOConfig(vllm=VLLMSettings(), runtime=_rt())


def test_failure_report_names_the_killed_rank_not_its_peer():
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    killed = ProcessFailure(local_rank=1, pid=11, exitcode=-signal.SIGKILL, error_file="<N/A>")
    stopped = ProcessFailure(local_rank=0, pid=10, exitcode=-signal.SIGTERM, error_file="<N/A>")
    info = describe_failures({0: stopped, 1: killed}, "hostA")
    assert info["rank"] == 1 and info["signal"] == "SIGKILL"
    assert info["message"] == ("training gang failed: rank 1 on host hostA (local rank 1, pid 11) was killed by "
                               "SIGKILL; 1 other rank(s) stopped")
    assert "\n" not in GangFailed("a\nb  c").args[0]


def test_per_sample_seeds_do_not_depend_on_the_batch_split():
    """The same sample index draws the same tokens whether it is generated in a batch of 4 or of 2 (+ offset)."""
    import torch

    from rlt_core.training.sampling import GumbelChoice, sample_seed

    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    whole = GumbelChoice([sample_seed(0, 3, i) for i in range(4)], temperature=0.7, top_p=0.9)(None, scores)
    halves = [GumbelChoice([sample_seed(0, 3, off + i) for i in range(2)], temperature=0.7, top_p=0.9)(
        None, scores[off:off + 2]) for off in (0, 2)]
    assert torch.equal(whole, torch.cat(halves))
    assert (torch.isfinite(whole).sum(dim=1) == 1).all()   # one token kept per row
    # an exact draw from softmax(scores / T): frequencies over many seeds match the probabilities
    one = torch.randn(1, 5)
    picks = torch.tensor([int(GumbelChoice([sample_seed(1, 0, i)], temperature=0.7)(None, one).argmax())
                          for i in range(4000)])
    freq = torch.bincount(picks, minlength=5).float() / 4000
    assert torch.allclose(freq, torch.softmax(one[0] / 0.7, dim=0), atol=0.03)


# ------------------------------------------------------------------------------------------------ real gangs
@pytest.fixture(scope="module")
def assets(tmp_path_factory, smol_tokenizer_dir):
    """Teacher and student tiny models (saved with the SmolLM2 tokenizer) and the rows of each phase."""
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm
    from rlt_core.prompts import student_assistant_content

    root = tmp_path_factory.mktemp("gang-assets")
    tok = load_tokenizer(smol_tokenizer_dir)
    for name, seed in (("teacher", 0), ("student", 1)):
        model = tiny_causal_lm(tok, seed=seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    teacher_rows = [{"question": q, "solution": s, "reasoning_trace": e} for q, s, e in PROBLEMS]
    distill_rows = [{"system": STYLE.student_system_prompt, "question": q,
                     "assistant": student_assistant_content(q, s, e, STYLE)} for q, s, e in PROBLEMS[:4]]
    for name, rows in (("teacher.jsonl", teacher_rows), ("grpo.jsonl", teacher_rows[:4]),
                       ("distill.jsonl", distill_rows)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _full_job(assets, out, ranks: int) -> TrainJob:
    b = 2 if ranks == 2 else 4   # per-rank micro-batch: 2 ranks x b against 1 rank x 2b (SFT: 1 against 2)
    return TrainJob(
        phases=[SFTPhase(model=str(assets / "teacher"), rows=str(assets / "teacher.jsonl"), config=_sft(b // 2)),
                GRPOPhase(student=str(assets / "student"), rows=str(assets / "grpo.jsonl"), config=_grpo(b),
                          reward=RewardConfig(batch_size=4, prompt_style=STYLE)),
                DistillPhase(model=str(assets / "student"), rows=str(assets / "distill.jsonl"), config=_distill(b))],
        output_dir=str(out), launch=Launch(ranks=ranks, threads_per_rank=1 if ranks == 2 else 2,
                                           collective_timeout_s=120))


def _metrics(out) -> dict[tuple[str, str], dict[int, float]]:
    series: dict = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            series.setdefault((m["phase"], m["name"]), {})[m["step"]] = m["value"]
    return series


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


@pytest.mark.slow
def test_two_ranks_match_one_rank_for_sft_grpo_and_distill(assets, tmp_path):
    from rlt_core.training.launch import launch_local

    t0 = time.monotonic()
    one = launch_local(_full_job(assets, tmp_path / "one", 1), timeout_s=600)
    t1 = time.monotonic()
    two = launch_local(_full_job(assets, tmp_path / "two", 2), timeout_s=600)
    t2 = time.monotonic()
    print(f"\n1 rank: {t1 - t0:.1f} s, 2 ranks: {t2 - t1:.1f} s")
    assert (one["ranks"], two["ranks"], two["backend"]) == (1, 2, "gloo")
    for phase, steps in (("sft", 20), ("grpo", 5), ("distill", 10)):
        assert one["phases"][phase]["steps"] == two["phases"][phase]["steps"] == steps
        assert two["phases"][phase]["steps_run"] == steps
    # the same tokens went through both gangs (SFT/distill: every example non-padding token, summed over ranks)
    for phase in ("sft", "distill"):
        assert one["phases"][phase]["tokens_in"] == two["phases"][phase]["tokens_in"] > 0
    m1, m2 = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for phase, n in (("sft", 20), ("distill", 10)):
        a, b = m1[(phase, f"{phase}/loss")], m2[(phase, f"{phase}/loss")]
        assert sorted(a) == sorted(b) == list(range(1, n + 1))
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=LOSS_RTOL, abs=LOSS_ATOL), (phase, step)
        assert a[n] < a[1]   # it trained
    # GRPO: the same completions (per-sample seeds), rewards, losses and gradient norms at every step
    for name, tol in (("grpo/loss", dict(abs=GRPO_LOSS_ATOL)), ("grpo/grad_norm", dict(rel=LOSS_RTOL, abs=LOSS_ATOL)),
                      ("grpo/reward", dict(rel=LOSS_RTOL, abs=LOSS_ATOL)), ("grpo/kl", dict(rel=1e-3, abs=LOSS_ATOL)),
                      ("rlt/reward/mean", dict(rel=LOSS_RTOL, abs=LOSS_ATOL)),
                      ("grpo/completions/mean_length", dict(abs=0))):
        a, b = m1[("grpo", name)], m2[("grpo", name)]
        assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5], name
        for step in a:
            assert b[step] == pytest.approx(a[step], **tol), (name, step, a[step], b[step])
    # the reward terms are logged over every rank's completions (8 per step), not rank 0's half
    assert m2[("grpo", "rlt/n_explanation_tokens/mean")] == m1[("grpo", "rlt/n_explanation_tokens/mean")]
    # final weights of each phase
    init = {"sft": _weights(assets / "teacher"), "distill": _weights(assets / "student")}
    init["grpo"] = _weights(one["phases"]["sft"]["model_dir"])
    for phase in ("sft", "grpo", "distill"):
        w1, w2 = _weights(one["phases"][phase]["model_dir"]), _weights(two["phases"][phase]["model_dir"])
        moved = sum(float(((w1[k] - init[phase][k]) ** 2).sum()) for k in w1) ** 0.5
        apart = sum(float(((w1[k] - w2[k]) ** 2).sum()) for k in w1) ** 0.5
        print(f"{phase}: ||w2 - w1|| / ||w1 - w0|| = {apart / moved:.2e}")
        assert moved > 0 and apart <= WEIGHT_REL * moved, (phase, apart, moved)
    # rank 0 alone wrote: no per-rank files outside the (removed) checkpoints
    names = sorted(os.listdir(tmp_path / "two"))
    assert names == ["distill", "grpo", "job.json", "launch.log", "metrics.jsonl", "result.json", "samples.jsonl",
                     "sft"]
    for phase in ("sft", "grpo", "distill"):
        assert sorted(os.listdir(tmp_path / "two" / phase)) == ["model", "result.json", "trained.json"]


def _rank_pid(job_path: str, rank: int):
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if job_path in cmd and "--supervise" not in cmd:
            try:
                if proc.environ().get("RANK") == str(rank):
                    return proc.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return None


@pytest.mark.slow
def test_killed_rank_fails_the_gang_in_bounded_time_and_the_rerun_resumes(assets, tmp_path):
    from rlt_core.training.launch import launch_local

    total = 40
    job = TrainJob(phases=[SFTPhase(model=str(assets / "teacher"), rows=str(assets / "teacher.jsonl"),
                                    config=_sft(2, steps=total, save_steps=1))],
                   output_dir=str(tmp_path / "run"),
                   launch=Launch(ranks=2, threads_per_rank=1, collective_timeout_s=60, shutdown_timeout_s=5))
    ckpts = tmp_path / "run" / "sft" / "checkpoints"
    killed = {}

    def kill_rank_1_mid_run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (ckpts / "checkpoint-3" / "trainer_state.json").exists():
            time.sleep(0.05)
        pid = _rank_pid(os.path.join(job.output_dir, "job.json"), 1)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

    killer = threading.Thread(target=kill_rank_1_mid_run, daemon=True)
    killer.start()
    with pytest.raises(GangFailed) as err:
        launch_local(job, timeout_s=600)
    ended = time.monotonic()
    killer.join(5)
    assert "at" in killed, "rank 1 was not found to kill"
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"training gang failed: rank 1 on host {socket.gethostname()} ")
    assert "killed by SIGKILL" in message
    assert (err.value.rank, err.value.signal) == (1, "SIGKILL")
    bound = job.launch.monitor_interval_s + job.launch.shutdown_timeout_s + 10
    print(f"\nkill -> GangFailed: {ended - killed['at']:.1f} s (bound {bound:.1f} s)")
    assert ended - killed["at"] < bound
    assert not os.path.exists(tmp_path / "run" / "result.json")   # nothing committed
    assert not os.path.exists(tmp_path / "run" / "sft" / "model")
    # the rerun resumes from the last complete checkpoint and computes only the steps after it
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        logged_before = len(f.readlines())
    result = launch_local(job, timeout_s=600)
    sft = result["phases"]["sft"]
    resumed_at = int(sft["resumed_from"].rsplit("-", 1)[1])
    assert 3 <= resumed_at < total
    assert sft["steps"] == total and sft["steps_run"] == total - resumed_at == result["steps_run"]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rerun = [json.loads(line) for line in f.readlines()[logged_before:]]
    # the rerun logged a loss for each step after the checkpoint, once: none redone, none skipped
    assert [m["step"] for m in rerun if m["name"] == "sft/loss"] == list(range(resumed_at + 1, total + 1))
    # a third run finds the phase finished: it trains nothing and reports the same totals
    again = launch_local(job, timeout_s=600)
    assert (again["steps"], again["steps_run"], again["phases"]["sft"]["tokens_in"]) == (total, 0, 0)
    assert again["phases"]["sft"]["final_loss"] == sft["final_loss"]


@pytest.mark.slow
def test_a_gang_past_its_timeout_is_stopped_whole(assets, tmp_path):
    import psutil

    from rlt_core.training.launch import launch_local

    job = TrainJob(phases=[SFTPhase(model=str(assets / "teacher"), rows=str(assets / "teacher.jsonl"),
                                    config=_sft(1, steps=10_000))], output_dir=str(tmp_path / "run"),
                   launch=Launch(ranks=2, threads_per_rank=1, shutdown_timeout_s=5))
    with pytest.raises(GangFailed, match=r"training gang timed out after 20 s and was stopped \(2 ranks on "):
        launch_local(job, timeout_s=20)   # mid start-up or mid-training, whichever it reached
    job_path = os.path.join(job.output_dir, "job.json")
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if job_path in (p.info["cmdline"] or [])]
    assert left == [], "ranks outlived the launcher"
    assert not os.path.exists(tmp_path / "run" / "result.json")


@pytest.mark.slow
def test_a_python_error_in_a_rank_is_one_line_naming_it(assets, tmp_path):
    from rlt_core.training.launch import launch_local

    job = TrainJob(phases=[SFTPhase(model=str(assets / "teacher"), rows=str(tmp_path / "missing.jsonl"),
                                    config=_sft(1))], output_dir=str(tmp_path / "run"), launch=Launch(ranks=2))
    with pytest.raises(GangFailed) as err:
        launch_local(job, timeout_s=300)
    assert str(err.value).startswith("training gang failed: rank ")
    assert f"on host {socket.gethostname()}" in str(err.value)
    assert "exited with code 1: " in str(err.value) and "missing.jsonl" in str(err.value)
    assert err.value.exitcode == 1 and "\n" not in str(err.value)


def test_gpu_check_dry_mode_passes_on_cpu(tmp_path):
    """scripts/gpu_check.py --cpu: every check of the GPU script on CPU with a 2-layer model (~30 s)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "gpu_check.py"), "--cpu", "--json", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"] for r in rows] == ["env", "reward_fp32", "reward_bf16", "scorer", "hf_generate", "sft_step",
                                          "grpo_step"]
    assert all(r["result"] == "PASS" for r in rows), rows
    assert "7 passed, 0 failed" in proc.stdout


FSDP_REWARD_RANK = '''
import datetime, json, sys
from types import SimpleNamespace
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from rlt_core.modeling import load_tokenizer, tiny_causal_lm
from rlt_core.prompts import PromptStyle
from rlt_core.reward import RewardConfig, RLTReward
from rlt_core.training.distributed import full_parameters

tokdir, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
tok = load_tokenizer(tokdir)
cfg = RewardConfig(batch_size=1, prompt_style=PromptStyle(teacher_system_prompt="Explain.",
                                                          student_system_prompt="Solve it."))
teacher, student = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
mesh = init_device_mesh("cpu", (2,))
for layer in teacher.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(teacher, mesh=mesh)
n = 3 if rank == 0 else 1   # unequal reward batches: 3 teacher forwards on rank 0, 1 on rank 1
texts = ["Add them.\\n\\n<|end_of_explanation|>", "One and two make three.", "Three."][:n]
args = (["What is 1 + 2?"] * n, ["1 + 2 = 3"] * n, texts)
trainer = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)))
with full_parameters(trainer, teacher):
    got = [b.reward for b in RLTReward(teacher, student, tok, cfg).score(*args)]
want = [b.reward for b in RLTReward(tiny_causal_lm(tok, seed=0), student, tok, cfg).score(*args)]
sharded = type(teacher.model.embed_tokens.weight).__name__
ids = torch.tensor([[1, 2, 3, 4, 5]])
loss = teacher(input_ids=ids, labels=ids).loss   # a sharded training step still works afterwards
loss.backward()
json.dump({"got": got, "want": want, "sharded": sharded, "loss": float(loss)}, open(f"{out}/rank{rank}.json", "w"))
dist.barrier()   # as rlt_core/training/launch.py ends: no rank tears gloo down while its peer's last collective runs
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_reward_forward_on_an_fsdp2_sharded_policy(tmp_path, smol_tokenizer_dir):
    """The r_KL forward through a policy sharded with FSDP2 (torch's fully_shard, CPU + gloo, 2 ranks), as
    ``full_parameters`` runs it under GRPO: one gather per scoring call, then local forwards, so ranks with unequal
    numbers of reward batches do not deadlock; the rewards equal the unsharded model's."""
    import subprocess
    import sys

    script = tmp_path / "fsdp_reward_rank.py"
    script.write_text(FSDP_REWARD_RANK)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), smol_tokenizer_dir, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank, n in ((0, 3), (1, 1)):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(out["got"]) == n and out["got"] == pytest.approx(out["want"], abs=1e-5)
        assert out["sharded"] == "DTensor"   # resharded after scoring
    assert json.loads((tmp_path / "rank0.json").read_text())["loss"] == pytest.approx(
        json.loads((tmp_path / "rank1.json").read_text())["loss"])

"""A training stage as a gang of N ranks: the job spec, the rank entry point, and a local launcher.

The owner (the factory's runner, a test, a bench) writes a :class:`TrainJob` (JSON) and starts N ranks of
:func:`run_rank` through a launcher; each rank trains with the existing phase functions (teacher SFT, teacher GRPO
with the RLT reward, student distillation) under data parallelism, and rank 0 alone writes what the owner reads::

    output_dir/job.json                  the spec (written by the owner, :func:`launch_local`)
    output_dir/<phase>/checkpoints/      resume state while a phase trains (rank 0's files, plus one RNG-state
                                         file per rank: the only thing other ranks write)
    output_dir/<phase>/model/            the phase's final weights (safetensors + config + tokenizer)
    output_dir/<phase>/trained.json      the phase's totals, written with its last checkpoint
    output_dir/<phase>/result.json       the phase's result (steps, steps run, final loss, tokens, seconds)
    output_dir/metrics.jsonl             every logged metric, one JSON object a line (rank 0)
    output_dir/samples.jsonl             GRPO completion samples with their reward terms (rank 0)
    output_dir/result.json               the job's result; written last, removed when a run starts

A rerun of the same job resumes: a phase whose model and totals are there is skipped, a phase cut short resumes
from its last complete checkpoint (``rlt_core.training.common.resume_checkpoint``) and counts only the optimizer
steps it computes (``steps_run``). Every rank reads the same ``output_dir``: across hosts it must be a shared
filesystem.

Launchers:

* one host: :func:`launch_local` (``rlt_core.training.gang``) runs ``torch.distributed.run`` (``--standalone``)
  in its own process group under a small supervisor that turns torchrun's ``ChildFailedError`` into one line
  naming the failed rank, host and exit signal or code (:class:`GangFailed`);
* by hand: ``torchrun --nproc-per-node N -m rlt_core.training.launch JOB.json`` (or ``accelerate launch``);
* across hosts, Ray Train (in the owner's code: rlt_core imports no ray)::

      TorchTrainer(lambda cfg: run_rank(TrainJob.model_validate_json(cfg["job"])), train_loop_config={"job": js},
                   scaling_config=ScalingConfig(num_workers=N, use_gpu=True, placement_strategy="SPREAD"),
                   torch_config=TorchConfig(backend="nccl", timeout_s=job.launch.collective_timeout_s))

  Ray Train sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and makes the process
  group; :func:`run_rank` joins it as is.

Faults: a rank that dies mid-step stops the gang within ``monitor_interval_s + shutdown_timeout_s`` (torchrun sees
the dead child, sends the others SIGTERM, then SIGKILL after the shutdown timeout); a peer blocked in a collective
fails at once when gloo sees the socket close, and at the latest after ``collective_timeout_s`` (the bound across
hosts, where no single torchrun sees every rank).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

from transformers import TrainerCallback

from rlt_core.training.common import MODEL_SUBDIR, TrainResult, last_logged_loss
from rlt_core.training.distributed import (
    barrier,
    broadcast_from_main,
    gather_all,
    init_process_group,
    placement,
    resolve_backend,
    trainer_args,
    world,
)
from rlt_core.training.gang import (
    JOB_FILE,
    RESULT_FILE,
    GangFailed,
    describe_failures,
    launch_local,
    remove_file,
    write_json,
)
from rlt_core.training.job import (  # noqa: F401
    METRICS_FILE,
    SAMPLES_FILE,
    TRAINED_FILE,
    DistillPhase,
    GRPOPhase,
    Launch,
    SFTPhase,
    TrainJob,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------ one rank
class _Progress(TrainerCallback):
    """Counts this run's optimizer steps and times training; on rank 0 writes the phase's totals next to its
    last checkpoint (so a rerun that finds ``model/`` finds them too)."""

    def __init__(self, phase_dir: str):
        self.phase_dir, self.steps, self.began, self.seconds = phase_dir, 0, None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - (self.began or time.perf_counter())

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step >= state.max_steps:
            write_json(os.path.join(self.phase_dir, TRAINED_FILE),
                       {"steps": int(state.global_step), "final_loss": last_logged_loss(state)})


def run_rank(job: TrainJob) -> Optional[dict]:
    """Train ``job`` as this rank of the gang the environment describes; rank 0 returns the job's result (the
    content of ``result.json``), other ranks None. Joins (or, under Ray Train, reuses) the process group."""
    import torch
    import torch.distributed as dist

    rank, size, _ = world()
    if job.launch.threads_per_rank:
        torch.set_num_threads(job.launch.threads_per_rank)
    use_cpu = any(p.config.runtime.use_cpu for p in job.phases) or not torch.cuda.is_available()
    backend = resolve_backend(job.launch.backend, use_cpu)
    created = init_process_group(backend, job.launch.collective_timeout_s, use_cpu)
    if size != job.launch.ranks:
        log.warning("the job asks for %d ranks but the launcher started %d; the batch is derived for %d",
                    job.launch.ranks, size, size)
    job.batch_plans(size)   # refuse a recipe whose global batch cannot stay fixed, before loading anything
    launch_args = trainer_args(job.launch.strategy, backend, job.launch.collective_timeout_s, size,
                               job.launch.fsdp_layer_cls)
    main = rank == 0
    try:
        if main:
            os.makedirs(job.output_dir, exist_ok=True)
            remove_file(os.path.join(job.output_dir, RESULT_FILE))   # a failed run leaves no result behind
        barrier()
        places = gather_all(dict(placement(), rank=rank))   # where each rank ran, for the record
        results, model_path = {}, None
        for phase in job.phases:
            out = job.phase_dir(phase.kind)
            done = broadcast_from_main(_finished(out))
            if done is None:
                done = _train_phase(job, phase, model_path, out, launch_args, main)
                if main:
                    write_json(os.path.join(out, RESULT_FILE), done)
            else:   # this run computes nothing for it
                log.info("%s was trained to the end (%d steps) by an earlier run; not redone", phase.kind,
                         done["steps"])
                done = dict(done, steps_run=0, resumed_from=None, tokens_in=0, tokens_out=0, forward_tokens=0,
                            train_seconds=0.0)
            results[phase.kind], model_path = done, done["model_dir"]
        result = {"phases": results, "model_dir": model_path, "steps": sum(r["steps"] for r in results.values()),
                  "steps_run": sum(r["steps_run"] for r in results.values()), "ranks": size,
                  "strategy": job.launch.strategy, "backend": backend, "threads_per_rank": torch.get_num_threads(),
                  "host": socket.gethostname(), "placement": places}
        barrier()
        if main:
            write_json(os.path.join(job.output_dir, RESULT_FILE), result)
        return result if main else None
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _train_phase(job: TrainJob, phase, model_path: Optional[str], out: str, launch_args: dict, main: bool) -> dict:
    import torch

    from rlt_core.modeling import load_tokenizer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[job.dtype]
    rows = read_rows(phase.rows)
    progress = _Progress(out)
    sinks = _Sinks(job.output_dir, phase.kind) if main else None
    log_metric = sinks.metric if sinks else None
    if isinstance(phase, GRPOPhase):
        from rlt_core.training.grpo import train_teacher_grpo

        policy_path = phase.model or model_path
        policy, student = _load_model(policy_path, dtype), _load_model(phase.student, dtype)
        if not phase.config.runtime.use_cpu and torch.cuda.is_available():
            student.to(torch.device("cuda", torch.cuda.current_device()))   # the reward's student forward
        res = train_teacher_grpo(policy, student, load_tokenizer(policy_path), rows, phase.config, phase.reward, out,
                                 log_metric=log_metric, log_text=sinks.text if sinks else None,
                                 callbacks=[progress], launch_args=launch_args)
    elif isinstance(phase, SFTPhase):
        from rlt_core.training.sft_teacher import train_teacher_sft

        res = train_teacher_sft(_load_model(phase.model, dtype), load_tokenizer(phase.model, padding_side="right"),
                                rows, phase.config, out, log_metric=log_metric, callbacks=[progress],
                                launch_args=launch_args)
    else:
        from rlt_core.training.distill import distill_student

        res = distill_student(_load_model(phase.model, dtype), load_tokenizer(phase.model, padding_side="right"),
                              rows, phase.config, out, log_metric=log_metric, callbacks=[progress],
                              launch_args=launch_args)
    return _phase_result(res, progress)


def _phase_result(res: TrainResult, progress: _Progress) -> dict:
    return {"steps": res.steps, "steps_run": progress.steps, "final_loss": res.final_loss, "model_dir": res.model_dir,
            "resumed_from": res.resumed_from, "tokens_in": res.tokens_in, "tokens_out": res.tokens_out,
            "forward_tokens": res.forward_tokens, "train_seconds": round(progress.seconds, 3)}


def _finished(phase_dir: str) -> Optional[dict]:
    """A phase an earlier run trained to the end (``model/`` in place and its totals written), else None."""
    model_dir = os.path.join(phase_dir, MODEL_SUBDIR)
    if not os.path.isdir(model_dir):
        return None
    for name in (RESULT_FILE, TRAINED_FILE):
        try:
            with open(os.path.join(phase_dir, name), encoding="utf-8") as f:
                return dict(json.load(f), model_dir=model_dir)
        except (OSError, ValueError):
            continue
    return None


def _load_model(path: str, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def read_rows(path: str) -> list[dict]:
    """The rows of a local JSON Lines (``.jsonl``/``.json``) or parquet file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Sinks:
    """Rank 0's metric and text sinks: one JSON object a line, appended and flushed as they come."""

    def __init__(self, output_dir: str, phase: str):
        self.output_dir, self.phase = output_dir, phase

    def _append(self, name: str, record: dict) -> None:
        with open(os.path.join(self.output_dir, name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metric(self, name: str, value: float, step: int) -> None:
        self._append(METRICS_FILE, {"phase": self.phase, "name": name, "value": value, "step": step})

    def text(self, name: str, text: str, step: int) -> None:
        self._append(SAMPLES_FILE, {"phase": self.phase, "name": name, "text": text, "step": step})


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlt_core.training.launch",
                                     description="one rank of a training gang (or, --supervise, the local gang)")
    parser.add_argument("job", help="the TrainJob JSON file")
    parser.add_argument("--supervise", action="store_true", help="run torchrun for the job (launch_local)")
    parser.add_argument("--failure-file", help="--supervise: where a failed rank is described (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("RLT_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s rank{os.environ.get('RANK', '-')} %(name)s: %(message)s")
    if args.supervise:
        from rlt_core.training.gang import supervise

        return supervise(args.job, args.failure_file or os.devnull)
    from torch.distributed.elastic.multiprocessing.errors import record

    with open(args.job, encoding="utf-8") as f:
        job = TrainJob.model_validate_json(f.read())
    record(run_rank)(job)   # a Python error reaches torchrun's report with its message
    return 0


__all__ = ["JOB_FILE", "RESULT_FILE", "DistillPhase", "GRPOPhase", "GangFailed", "Launch", "SFTPhase", "TrainJob",
           "describe_failures", "launch_local", "read_rows", "run_rank"]

if __name__ == "__main__":
    sys.exit(main())

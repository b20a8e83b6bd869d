"""train_teacher: problems -> teacher checkpoint (SFT warm-up in the teacher format, then GRPO with the RLT reward).

Training state lives in a work folder keyed by the artifact key, so a crashed run resumes instead of starting
over: a phase whose model is saved is not trained again, a phase cut short resumes from its last complete
checkpoint (rlt_core.training resumes from ``<work>/<phase>/checkpoints``). The stage lock makes sure only one
run trains a key at a time. The stage's stats count the optimizer steps in all (``steps``) and those this run
computed (``steps_run``); crash points ``train.step`` (after an optimizer step) and ``train.checkpoint`` (after a
checkpoint is on disk) let tests/faults kill a run mid-training (infra/faults.py).
"""
from __future__ import annotations

import json
import os
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field, model_validator
from transformers import TrainerCallback

from data_contracts import teacher_checkpoint
from infra import faults
from infra.engine import gang
from infra.engine.config import NOT_IN_KEY, KeyModel
from infra.engine.gang import LaunchConfig, check_batch
from infra.engine.models import fresh_model, model_and_tokenizer
from infra.engine.reward_student import RewardStudentConfig
from infra.engine.stage import Artifact, Model, StageRun, declare
from infra.models import resolve_model
from rlt_core.reward import RewardConfig
from rlt_core.training.common import MODEL_SUBDIR, last_logged_loss
from rlt_core.training.grpo import TeacherGRPOConfig
from rlt_core.training.sft_teacher import TeacherSFTConfig


class TrainTeacherConfig(RewardStudentConfig):
    base_model: Annotated[str, KeyModel("base")] = "builtin:smollm2-135m-instruct"
    phases: list[Literal["sft", "grpo"]] = Field(default_factory=lambda: ["sft", "grpo"],
                                                description="[] = use the base model as the teacher")
    sft: TeacherSFTConfig = Field(default_factory=TeacherSFTConfig)
    grpo: TeacherGRPOConfig = Field(default_factory=TeacherGRPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    max_problems: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    launch: Annotated[LaunchConfig, NOT_IN_KEY] = Field(
        default_factory=LaunchConfig, description="train as a gang of ranks (infra/engine/gang.py); where and how "
        "wide the training runs, never part of the key: the global batch is")

    @model_validator(mode="after")
    def _batch_fits_the_gang(self) -> "TrainTeacherConfig":
        check_batch(self.launch, [("train_teacher.sft.batch_size", self.sft.batch_size, self.sft.per_device_batch_size),
                                  ("train_teacher.grpo (prompts_per_step x num_generations)",
                                   self.grpo.completions_per_step, self.grpo.per_device_batch_size)])
        return self

    def key_config(self) -> dict:
        """With no training phase the checkpoint is the base model: training settings do not change it."""
        return super().key_config() if self.phases else {"phases": [], "base_model": self.base_model}

    def key_inputs(self, declared: tuple[str, ...]) -> tuple[str, ...]:
        # no training phase: the base model is the teacher whatever the problems, so a night whose source grew
        # keeps the same teacher key, and generate/score reuse earlier rows (infra/engine/reuse.py)
        return declared if self.phases else ()


def train_teacher(run: StageRun, cfg: TrainTeacherConfig, problems: Artifact,
                  reward_student: Optional[Model]) -> dict:
    """SFT warm-up then GRPO with the RLT reward; the result is registered as a safetensors checkpoint.
    ``reward_student``: the night's baseline student checkpoint, bound when ``cfg.reward_student`` is 'baseline'."""
    base = resolve_model(cfg.base_model)
    student_ref = reward_student.ref if reward_student is not None else cfg.student_model
    row = dict(role="teacher", base_model=cfg.base_model, base_digest=base.digest, data_keys=[problems.key],
               student_key=student_ref, config_json=run.parts.config)
    if not cfg.phases:
        run.log.info("train_teacher: no phases configured; the base model is the teacher")
        run.count_tokens(tokens_in=0, tokens_out=0, forward_tokens=0)   # no model ran: 0, not unknown
        run.save_checkpoint(None, dict(row, phase="base", steps=0, metrics_json={}))
        return {"steps": 0}
    rows = list(problems.rows(["question", "solution", "reasoning_trace"], where="split = 'train'"))
    rows = rows[: cfg.max_problems]
    student = cfg.reward_student_snapshot("train_teacher", reward_student).path
    if cfg.launch.gang:
        model_dir, steps, steps_run, metrics = _train_gang(run, cfg, rows, base.path, student)
    else:
        progress = _Progress()
        model_dir, steps, metrics = _train(run, cfg, rows, base.path, student, progress)
        steps_run = progress.steps
        # a checkpoint's bits depend on the intra-op thread count (float sums in another order): part of its lineage
        metrics.update(torch_threads=torch.get_num_threads(), ranks=1)
    run.save_checkpoint(model_dir, dict(row, phase="+".join(cfg.phases), steps=steps, metrics_json=metrics))
    run.log.info("train_teacher: %d steps on %d problems (%d computed by this run, the rest resumed)", steps,
                 len(rows), steps_run)
    return {"steps": steps, "steps_run": steps_run, **metrics}


def _train_gang(run: StageRun, cfg: TrainTeacherConfig, rows: list[dict], base_path: str,
                student_path: str) -> tuple[str, int, int, dict]:
    """The phases as one gang job (infra/engine/gang.py): the ranks read the rows from the work folder."""
    from rlt_core.training.job import GRPOPhase, SFTPhase

    data = gang.write_rows(os.path.join(run.work_dir(), "rows.jsonl"), rows)
    phases: list = []
    if "sft" in cfg.phases:
        phases.append(SFTPhase(model=base_path, rows=data, config=cfg.sft))
    if "grpo" in cfg.phases:
        phases.append(GRPOPhase(model=None if phases else base_path, student=student_path, rows=data,
                                config=cfg.grpo, reward=cfg.reward))
    result = gang.train(run, cfg.launch, phases, cfg.dtype)
    metrics = {f"{name}_final_loss": r["final_loss"] for name, r in result["phases"].items()}
    metrics.update(torch_threads=result["threads_per_rank"], ranks=result["ranks"])
    return result["model_dir"], result["steps"], result["steps_run"], metrics


class _Progress(TrainerCallback):
    """Counts the optimizer steps this process computes and passes the crash points inside training. Once the
    phase's last checkpoint is saved it writes the phase's totals to ``<phase>/trained.json``: before ``model/``
    is saved and the checkpoints are dropped, so a rerun that finds ``model/`` finds the totals too."""

    def __init__(self):
        self.steps = 0
        self.phase_dir = ""   # the phase being trained (set before its train())

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        faults.point("train.step")   # the step is done in memory, not yet in a checkpoint

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            _write_totals(self.phase_dir, int(state.global_step), last_logged_loss(state))
        faults.point("train.checkpoint")   # checkpoint-<global_step> is complete on disk


def _trained_path(phase_dir: str) -> str:
    return os.path.join(phase_dir, "trained.json")


def _write_totals(phase_dir: str, steps: int, final_loss: Optional[float]) -> None:
    path = _trained_path(phase_dir)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"steps": steps, "final_loss": final_loss}, f)
    os.replace(path + ".tmp", path)


def _finished(phase_dir: str) -> Optional[dict]:
    """A phase trained to the end by an earlier run of this key: its totals, else None."""
    model_dir = os.path.join(phase_dir, MODEL_SUBDIR)   # save_final puts model/ in place atomically
    if not (os.path.isdir(model_dir) and os.path.exists(_trained_path(phase_dir))):
        return None
    with open(_trained_path(phase_dir), encoding="utf-8") as f:
        return dict(json.load(f), model_dir=model_dir)


def _train(run: StageRun, cfg: TrainTeacherConfig, rows: list[dict], base_path: str,
           student_path: str, progress: _Progress) -> tuple[str, int, dict]:
    from rlt_core.training.grpo import train_teacher_grpo
    from rlt_core.training.sft_teacher import train_teacher_sft

    log_metric, work = run.metric_logger(), run.work_dir()
    model_path, steps, metrics = base_path, 0, {}
    for phase in [p for p in ("sft", "grpo") if p in cfg.phases]:
        out = progress.phase_dir = os.path.join(work, phase)
        done = _finished(out)
        if done is not None:
            run.log.info("train_teacher: %s was trained to the end (%d steps) by an earlier run; not redone",
                         phase, done["steps"])
        elif phase == "sft":
            model = fresh_model(model_path, cfg.dtype)
            _, tok = model_and_tokenizer(model_path, cfg.dtype, padding_side="right")
            res = train_teacher_sft(model, tok, rows, cfg.sft, out, log_metric=log_metric, callbacks=[progress])
            run.count_tokens(**res.tokens)   # None (unknown) counts add nothing
            del model
        else:
            policy = fresh_model(model_path, cfg.dtype)
            student, tok = model_and_tokenizer(student_path, cfg.dtype)
            res = train_teacher_grpo(policy, student, tok, rows, cfg.grpo, cfg.reward, out, log_metric=log_metric,
                                     log_text=run.text_logger(), callbacks=[progress])
            run.count_tokens(**res.tokens)
        if done is None:   # (the totals the last checkpoint wrote already, when it was saved at the last step)
            _write_totals(out, res.steps, res.final_loss)
            done = {"steps": res.steps, "final_loss": res.final_loss, "model_dir": res.model_dir}
        model_path, steps = done["model_dir"], steps + done["steps"]
        metrics[f"{phase}_final_loss"] = done["final_loss"]
    return model_path, steps, metrics


# version 2: training rows are read in problem_id order from the catalog (was: part order)
STAGE = declare(train_teacher, version="2", outputs=(teacher_checkpoint.CONTRACT,))

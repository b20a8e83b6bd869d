"""The RLT reward (rlt-method.md 2): how well an explanation teaches a student the known solution.

For a teacher completion ``o`` with explanation tokens ``t_1..t_K`` and solution tokens ``s_1..s_M``::

    l_S[m]  = log pi_student(s_m | x_S, t, s_<m) at logits / tau_S   (student chat: q, thought, solution)
    l_T[k]  = log pi_teacher(t_k | x_T, t_<k)    at logits / tau_T   (teacher chat: q, solution, explanation)
    l_St[k] = log pi_student(t_k | x_S, t_<k)    at logits / tau_S
    d[k]    = l_T[k] - l_St[k]            (sampled-token log-ratio "KL"; k3 form d - 1 + e^-d if use_schulman_kl)

    r_ss   = a1 * mean_m l_S + a2 * min_m l_S          paper: a = (1, 0.01)
    r_kl   = b1 * mean_k d   + b2 * max_k d            paper: b = (3, 0.03)
    reward = r_ss - r_kl + format_penalty              format_penalty = -1 if <|end_of_explanation|> is missing

A reduction over an empty span is NaN and is replaced by ``not_matched_penalty`` (-1) for the answer terms and
by ``-not_matched_penalty`` (+1) for the KL terms, as in the reference (so an empty explanation costs
r_kl = 3.03). The breakdown stores the replaced values, so :func:`combine` on a ledger row reproduces ``reward``.

Departures from the reference ``TeacherKLBasedReward`` (besides those listed in ``rlt_core.spans``):

* batched right-padded forwards instead of one sequence at a time; log_softmax in fp32 (``logprob_dtype``);
* both temperatures are explicit config (the reference takes the teacher's from the trainer);
* the normalisers are the identity (the paper recipe's ``null``; its +-1e5 clamps never bind) and the
  ``no_entropy`` logging variant is not computed;
* an empty *solution* span gives the -1 fills for both answer terms (the reference's masked min returns the
  float max there, as its solution log-probs are not left-aligned);
* the models are injected at construction and the teacher is used as passed (the live policy under GRPO),
  switched to eval mode while scoring and restored afterwards.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from rlt_core.logprobs import ForwardPlan, plan_forward, scoring_mode, token_logprobs
from rlt_core.method import TEMPERATURE
from rlt_core.prompts import PromptStyle
from rlt_core.spans import ScoringExample, build_examples

log = logging.getLogger(__name__)


class RewardConfig(BaseModel):
    """RLT reward settings; the defaults are the paper recipe (``cfgs/run_cfg/teacher_rlt.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_coef: tuple[float, float] = (1.0, 0.01)  # over (mean, min) of student solution log-probs
    kl_coef: tuple[float, float] = (3.0, 0.03)  # over (mean, max) of teacher-minus-student explanation log-probs
    teacher_temperature: float = Field(TEMPERATURE, gt=0)  # = the generation temperature (unbias_teacher_log_probs)
    student_temperature: float = Field(TEMPERATURE, gt=0)
    not_matched_penalty: float = -1.0
    use_schulman_kl: bool = False
    batch_size: int = Field(8, ge=1)
    max_length: Optional[int] = Field(None, ge=2)  # longer sequences are not scored (penalty fills)
    logprob_dtype: Literal["float32", "model"] = "float32"
    gather_hidden: bool = True  # apply lm_head at span positions only, when the model allows it
    share_prefix: bool = True  # run a batch's common prefix once, when the model allows it
    prompt_style: PromptStyle = Field(default_factory=PromptStyle.stratos)

    def digest(self) -> str:
        """Stable 16-hex hash of the JSON of every field (goes into the ledger and the manifest)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RewardBreakdown:
    """Every term of one reward; NaN reductions are already replaced by the penalty fills."""

    reward: float
    r_ss: float
    r_kl: float
    answer_logprob_mean: float
    answer_logprob_min: float
    kl_mean: float
    kl_max: float
    format_penalty: float
    n_explanation_tokens: int
    n_solution_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _fill(x: float, value: float) -> float:
    return value if math.isnan(x) else x


def combine(answer_logprob_mean: float, answer_logprob_min: float, kl_mean: float, kl_max: float,
            format_penalty: float, config: RewardConfig) -> tuple[float, float, float]:
    """``(reward, r_ss, r_kl)`` from stored reductions, with no forward pass (re-weighting a ledger).

    NaN inputs get the penalty fills. Temperatures and ``use_schulman_kl`` act per token, so changing them needs
    a fresh scoring run.

    >>> [round(x, 6) for x in combine(-0.5, -4.0, 0.2, 3.0, 0.0, RewardConfig())]  # r_ss=-0.5-0.04, r_kl=0.6+0.09
    [-1.23, -0.54, 0.69]
    """
    p = config.not_matched_penalty
    lp_mean, lp_min = _fill(answer_logprob_mean, p), _fill(answer_logprob_min, p)
    kl_mean, kl_max = _fill(kl_mean, -p), _fill(kl_max, -p)
    r_ss = config.answer_coef[0] * lp_mean + config.answer_coef[1] * lp_min
    r_kl = config.kl_coef[0] * kl_mean + config.kl_coef[1] * kl_max
    return r_ss - r_kl + format_penalty, r_ss, r_kl


def _reductions(values: torch.Tensor, high: bool) -> tuple[float, float]:
    """(mean, max) if ``high`` else (mean, min); NaN for an empty span (the reference's 0/0)."""
    if values.numel() == 0:
        return math.nan, math.nan
    v = values.double()
    return v.mean().item(), (v.max() if high else v.min()).item()


class RLTReward:
    """Scores teacher completions with the RLT reward; one implementation for GRPO and the score stage.

    Args:
        teacher: causal LM giving the teacher log-probs (during GRPO: the current policy, used as-is).
        student: frozen causal LM on the same vocabulary.
        tokenizer: the tokenizer shared by both (its chat template builds both chats).
        config: :class:`RewardConfig`.

    After each :meth:`score` call, ``last_forward_tokens`` holds the tokens it pushed through the two models: the
    full length of each teacher sequence and of each student chat, counted for each model that runs on it (a
    sequence with no position to score is not run). Nominal, as in the score stage's cost record: the right
    padding of a batch and a common prefix run once (``share_prefix``) are not subtracted.
    """

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, tokenizer,
                 config: Optional[RewardConfig] = None):
        self.teacher, self.student, self.tokenizer = teacher, student, tokenizer
        self.config = config or RewardConfig()
        self.last_forward_tokens = 0
        for name, model in (("teacher", teacher), ("student", student)):
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            if vocab is not None and len(tokenizer) > vocab:
                raise ValueError(f"{name} has {vocab} logits but the tokenizer has {len(tokenizer)} tokens: "
                                 "teacher and student must share the tokenizer's vocabulary")
        self._plans: dict[int, ForwardPlan] = {}

    def _plan(self, model) -> ForwardPlan:
        if id(model) not in self._plans:  # one probe per model object; GRPO keeps the same policy object
            self._plans[id(model)] = plan_forward(model, self.config.gather_hidden, self.config.share_prefix)
            log.debug("forward plan for %s: %s", type(model).__name__, self._plans[id(model)])
        return self._plans[id(model)]

    def score(self, questions: Sequence[str], solutions: Sequence[str], completions: Sequence[str],
              batch_size: Optional[int] = None, prompts: Optional[Sequence[str]] = None) -> list[RewardBreakdown]:
        """Reward breakdowns for N (question, stored solution, teacher completion) triples.

        Args:
            questions: N questions.
            solutions: N stored reference solutions (untagged).
            completions: N teacher texts generated after the teacher prompt (after ``<|begin_of_explanation|>\\n\\n``).
            batch_size: sequences per forward pass (default ``config.batch_size``).
            prompts: the exact teacher prompts used for generation, if they differ from the rebuilt ones.
        Returns:
            N :class:`RewardBreakdown`, in input order.
        """
        n = len(completions)
        if len(questions) != n or len(solutions) != n or (prompts is not None and len(prompts) != n):
            raise ValueError(f"got {len(questions)} questions, {len(solutions)} solutions and {n} completions"
                             + (f" and {len(prompts)} prompts" if prompts is not None else "") + "; they must match")
        for field, values in (("question", questions), ("solution", solutions), ("completion", completions)):
            for i, v in enumerate(values):
                if not isinstance(v, str):
                    raise TypeError(f"row {i}: {field} must be a str, got {type(v).__name__}")
        self.last_forward_tokens = 0
        if n == 0:
            return []
        cfg = self.config
        examples = build_examples(self.tokenizer, questions, solutions, completions, cfg.prompt_style,
                                  cfg.not_matched_penalty, prompts=prompts, max_length=cfg.max_length)
        teacher_lp, student_lp = self._logprobs(examples, batch_size or cfg.batch_size)
        return [self._breakdown(ex, t, s) for ex, t, s in zip(examples, teacher_lp, student_lp)]

    def _logprobs(self, examples: list[ScoringExample], batch_size: int):
        """Teacher log-probs on the explanation span; student log-probs on [explanation span, solution span]."""
        cfg = self.config
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        fp32 = cfg.logprob_dtype == "float32"
        t_pos = [list(range(*ex.teacher_span)) for ex in examples]
        s_pos = [list(range(*ex.student_thought_span)) + list(range(*ex.solution_span)) for ex in examples]
        self.last_forward_tokens = (sum(len(ex.teacher_ids) for ex, pos in zip(examples, t_pos) if pos)
                                    + sum(len(ex.student_ids) for ex, pos in zip(examples, s_pos) if pos))
        with scoring_mode(self.teacher, self.student):
            teacher_lp = token_logprobs(self.teacher, [ex.teacher_ids for ex in examples], t_pos,
                                        cfg.teacher_temperature, batch_size, pad, fp32, self._plan(self.teacher))
            student_lp = token_logprobs(self.student, [ex.student_ids for ex in examples], s_pos,
                                        cfg.student_temperature, batch_size, pad, fp32, self._plan(self.student))
        return teacher_lp, student_lp

    def _breakdown(self, ex: ScoringExample, teacher_lp: torch.Tensor, student_lp: torch.Tensor) -> RewardBreakdown:
        k = ex.student_thought_span[1] - ex.student_thought_span[0]
        if k != ex.teacher_span[1] - ex.teacher_span[0]:  # spans.py builds them equal; the KL needs it
            raise AssertionError(f"teacher/student explanation spans differ: {ex.teacher_span} vs "
                                 f"{ex.student_thought_span}")
        d = teacher_lp - student_lp[:k]
        if self.config.use_schulman_kl:
            d = d - 1 + torch.exp(-d)
        kl_mean, kl_max = _reductions(d, high=True)
        lp_mean, lp_min = _reductions(student_lp[k:], high=False)
        p = self.config.not_matched_penalty
        lp_mean, lp_min, kl_mean, kl_max = _fill(lp_mean, p), _fill(lp_min, p), _fill(kl_mean, -p), _fill(kl_max, -p)
        reward, r_ss, r_kl = combine(lp_mean, lp_min, kl_mean, kl_max, ex.format_penalty, self.config)
        return RewardBreakdown(reward=reward, r_ss=r_ss, r_kl=r_kl, answer_logprob_mean=lp_mean,
                               answer_logprob_min=lp_min, kl_mean=kl_mean, kl_max=kl_max,
                               format_penalty=ex.format_penalty, n_explanation_tokens=k,
                               n_solution_tokens=ex.solution_span[1] - ex.solution_span[0])

    def as_trl_reward_func(self) -> Callable[..., list[float]]:
        """A TRL ``GRPOTrainer`` reward function ``f(prompts, completions, **kwargs) -> list[float]``.

        Reads the dataset columns ``question`` and ``solution`` from kwargs; string prompts (the teacher prompts
        the completions continue) are used as the teacher context. The last batch's breakdowns are kept on
        ``f.last_breakdowns`` and its model forward tokens on ``f.last_forward_tokens`` (see the class
        docstring), and each term's batch mean goes to TRL's ``log_metric`` when it is passed.
        """
        def rlt_reward(prompts, completions, **kwargs) -> list[float]:
            for col in ("question", "solution"):
                if col not in kwargs:
                    raise KeyError(f"the reward needs a '{col}' dataset column; got columns {sorted(kwargs)}")
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            given = list(prompts) if prompts is not None and all(isinstance(p, str) for p in prompts) else None
            out = self.score(kwargs["question"], kwargs["solution"], texts, prompts=given)
            rlt_reward.last_breakdowns = out
            rlt_reward.last_forward_tokens = self.last_forward_tokens
            log_metric = kwargs.get("log_metric")
            if callable(log_metric) and out:
                for key in ("r_ss", "r_kl", "answer_logprob_mean", "answer_logprob_min", "kl_mean", "kl_max",
                            "format_penalty", "n_explanation_tokens"):
                    log_metric(f"rlt/{key}", sum(getattr(b, key) for b in out) / len(out))
            return [b.reward for b in out]

        rlt_reward.__name__ = "rlt_reward"
        rlt_reward.last_breakdowns = []
        rlt_reward.last_forward_tokens = 0
        return rlt_reward

"""Experiment: does the RLT method work at the scale of a 2-core CPU? One command, resumable, every phase on disk.

    python experiments/evidence.py --out .scratch/evidence                 # the measurement (round 2: many hours on 2 cores; resumable)
    python experiments/evidence.py --profile smoke --out /tmp/evidence     # tiny random models, minutes (CI)

It measures the three claims of the RLT paper with the builtin SmolLM2-135M-Instruct as teacher and student. Round 2
(issue 24) runs on the builtin ``arithmetic-easy-terse`` problems: arithmetic-easy's questions (3 operands in 1..10
with + - *) with an answer-only reference solution, the regime the method is for (the explanation must supply the
steps); the base student's greedy accuracy on the task's validation items is inside the 5-60% band
(``experiments/task_probe.py``, docs/results.md). The teacher's SFT warm-up trains on the generator's worked
derivations (``worked_solution``), as the paper's teacher warms up on another model's traces. Round 1 ran on
``arithmetic-easy``, whose reference solution is itself the worked derivation (``--set task='"arithmetic-easy"'``
with the arms less ``worked_thought``).

1. *The teacher learns.* Teacher-format SFT warm-up (the paper's phase 1), then GRPO with the RLT reward
   (:func:`rlt_core.training.grpo.train_teacher_grpo`, TRL's GRPOTrainer) for ``grpo_steps`` steps. The mean
   reward on held-out problems (``heldout_prompts`` x ``heldout_samples``, the same per-sample seeds before and
   after) is compared per problem: mean difference with a 95% bootstrap CI over problems, and a paired t interval.
   Every reward term per GRPO step goes to ``grpo_history.json`` and ``reward_terms.png``.
2. *The explanations teach better.* One student per dataset, same steps, batch and max length
   (:func:`rlt_core.training.distill.distill_student`): ``reference`` (the reference solution, no thought block),
   ``untrained`` (one explanation per problem from the teacher before GRPO, i.e. after the SFT warm-up),
   ``trained`` (sample 0 of the trained teacher) and ``trained_best_of_k`` (the highest-reward of K samples); on a
   terse task also ``worked_thought`` (the generator's worked derivation as the thought: what a perfect teacher
   would write).
   Each is evaluated greedily on ``eval_items`` held-out items (the ``arithmetic-easy-heldout`` partition; never in
   any training set) with a 95% bootstrap CI, plus the paired difference to ``reference``.
3. *Reward vs teaching.* The trained teacher's K x M explanations sorted by reward into ``reward_bins`` bins of
   equal size; one student per bin (same budget); held-out accuracy per bin and its Spearman/Pearson correlation
   (with p) with the bin's mean reward.

Round 2 (issue 24) made the arms fair: every arm of claim 2 is trained with ``distill_seeds`` seeds (CIs over seeds
and items, :func:`seeds_items_ci`; paired differences seed against seed); a ``reference_thought`` arm puts the
reference solution inside the thought block (the explanation arms' format); random-, best- and worst-of-K arms;
sampled evaluation (``eval_samples`` at ``eval_temperature``: avg@k, pass@k) beside greedy; the training tokens of
every arm are reported beside its rows. Options for its other questions: ``reward_student`` (``base``;
``reference``: the student distilled on the reference solutions scores the teacher; ``worked``: the one distilled on
a terse task's worked derivations), ``kl_coef`` (r_KL's weights),
``task`` (e.g. the answer-only ``arithmetic-terse``; ``experiments/task_probe.py`` says which tasks put the base
student in the 5-60% band). One run per setting, each in its own ``--out`` and ``--records`` folder.

Every phase writes its result to ``--out`` and is skipped when the file is there, so a killed run resumes at the
phase it was in; GRPO, the one long phase (~1 hour), checkpoints every 10 steps and resumes from the newest. ``results.json`` gathers everything; ``report.md`` holds the tables. A run whose folder is gone (a fresh
checkout or machine) continues from its committed records with ``--restore`` (:func:`restore_run_folder`; ``make
evidence`` passes it): each record holds its phase's whole result, so only the unfinished phases are computed.

Records (bench/record.py): each phase also writes a record (command, commit, machine load, the profile and seed,
the phase's per-item outcomes and wall time) to ``<out>/records/<phase>.json`` and publishes a copy to
``--records`` (default for the ``full`` profile: ``docs/results/evidence/``, committed; other profiles:
``<out>/records`` only); ``summary.json`` there holds the statistics. ``scripts/render_docs.py`` renders the tables of
docs/results.md from that folder. A new run (a new ``--out``) first removes the published records of another run,
so the folder never mixes two runs; a resumed run republishes its kept records.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import plots  # noqa: E402

log = logging.getLogger("experiments.evidence")

BOXED = "Return your final response within \\boxed{}. "
# The distillation arms (claim 2), each trained with ``distill_seeds`` seeds on the same problems, steps and batch:
# the reference solution as the answer with no thought block (the round-1 arm), the reference solution inside the
# thought block (the same student format as the explanation arms), and explanations of the teacher before GRPO
# (one per problem) and after it (sample 0; a random / the best / the worst of K by RLT reward).
ARMS = ("reference", "reference_thought", "untrained", "trained", "trained_random_of_k", "trained_best_of_k",
        "trained_worst_of_k")
# a terse task's generator also knows the worked derivation (``worked_solution``): the teacher warms up on it (as
# the paper's teacher warms up on another model's traces) and the ``worked_thought`` arm distils it directly (the
# explanation a perfect teacher would write: the bar beside the answer-only reference)
WORKED_ARM = "worked_thought"
# the order the arms' students are trained in (a run cut short has the comparisons claim 2 rests on first: the
# trained teacher's sample 0 and best-of-K beside the references and the worked derivations; then the reward-bin
# students of claim 3; the random- and worst-of-K controls last); results and tables keep the order of ``arms``
RUN_ORDER = ("reference", "reference_thought", "untrained", "trained", "trained_best_of_k", WORKED_ARM,
             "trained_random_of_k", "trained_worst_of_k")
CONTROL_ARMS = ("trained_random_of_k", "trained_worst_of_k")   # trained after the reward-bin students
PROFILES: dict[str, dict[str, Any]] = {
    # the measurement on 2 cores: ~78 min for the teacher side (--stop-after teacher), ~96 more for the students
    # (docs/results.md has the wall times)
    # sft 8 x 4 at 2e-5, not 16 x 4 at 5e-5: the heavier warm-up made the teacher copy the solution deterministically
    # (4 identical samples per prompt, zero reward variance in every group, zero gradient: docs/results.md)
    "full": dict(tiny=False, task="arithmetic-easy-terse", train_problems=400, sft_steps=8, sft_lr=2e-5, grpo_steps=100,
                 group=4, prompts_per_step=2, max_new_tokens=96, lr=1e-4, beta=0.04, lora_r=16,
                 heldout_prompts=64, heldout_samples=4, distill_problems=128, best_of_k=4, distill_steps=32,
                 distill_batch=8, distill_lr=5e-5, eval_items=200, eval_max_new_tokens=200, batch=16, eval_batch=32,
                 arms=[*ARMS, WORKED_ARM], distill_seeds=3, eval_samples=8, eval_temperature=0.7, reward_bins=8,
                 reward_student="base", kl_coef=[3.0, 0.03]),
    # plumbing only (tiny random models): what CI runs
    "smoke": dict(tiny=True, task="arithmetic-easy-terse", train_problems=16, sft_steps=2, sft_lr=5e-5, grpo_steps=2,
                  group=2, prompts_per_step=2, max_new_tokens=12, lr=5e-5, beta=0.04, lora_r=4,
                  heldout_prompts=4, heldout_samples=2, distill_problems=8, best_of_k=4, distill_steps=2,
                  distill_batch=4, distill_lr=5e-5, eval_items=8, eval_max_new_tokens=12, batch=8, eval_batch=8,
                  arms=[*ARMS, WORKED_ARM], distill_seeds=2, eval_samples=2, eval_temperature=0.7, reward_bins=4,
                  reward_student="base", kl_coef=[3.0, 0.03]),
}
# The settings runs of issue 24 (questions 3 and 5), one per name: ``--setting NAME`` applies SETTINGS_BASE and its
# overrides to the full profile, runs in .scratch/evidence-<name>, publishes to docs/results/evidence-settings/<name>
# and reuses the main run's teacher-free phases (--reuse-from .scratch/evidence): it trains the teacher under its
# setting and the students its setting changes, 3 seeds each, against the reference students of the main run.
SETTINGS: dict[str, dict[str, Any]] = {
    "kl-1": {"kl_coef": [1.0, 0.01]},                 # r_KL's weights a third of the paper's
    "kl-0": {"kl_coef": [0.0, 0.0]},                  # no r_KL: the teacher is paid for r_SS alone
    # a student that can follow the steps scores: on a terse task the one distilled on the worked derivations (the
    # reference-distilled one learned to answer without steps; it is the issue's example, from round 1's task)
    "reward-student-worked": {"reward_student": "worked"},
    "reward-student-reference": {"reward_student": "reference"},
}
SETTINGS_BASE: dict[str, Any] = {"reward_bins": 0, "arms": ["reference", "trained", "trained_best_of_k"]}
SETTINGS_RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results",
                                "evidence-settings")
SHORT_TEACHER = ("You are given a question and its solution. Explain step by step how to reach the solution, "
                 "inside the explanation tags.")
EMPTY = "(no explanation)"
# the run folder's JSON files that are not phases (the probes and the audit write theirs beside the phases)
NOT_PHASES = ("results.json", "config.json", "run.json", "thought_probe.json", "explanation_audit.json")
RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results", "evidence")
SHORT_STUDENT = "Think step by step inside the thought tags, then give the solution."


# ---------------------------------------------------------------------------------------------------------- helpers
class Records:
    """Where a run's records go: ``<out>/records`` (kept with the run, for resuming) and ``folder`` (published)."""

    def __init__(self, out: str, folder: str, cfg: dict, argv: Optional[list[str]], reuse_from: Optional[str] = None):
        self.kept, self.folder, self.cfg, self.argv = os.path.join(out, "records"), folder, cfg, argv
        self.run_id = _run_id(out)
        self.reuse_from = reuse_from
        self.compute = True   # False (--stop-after finished): a phase not finished yet is an error, never computed

    def reuse(self, name: str) -> bool:
        """Take phase ``name`` from the ``reuse_from`` run when the phase does not depend on the teacher (the base
        student; the reference, reference-as-thought and worked-derivation students) and that run made it with the
        same task, problems, distillation and evaluation settings: its result, its student model (linked) and its
        record (marked ``reused_from``, under this run's id). Settings runs (KL weights, the reward's student) thus
        train only what their setting changes."""
        if not self.reuse_from or not _teacher_free(name):
            return False
        other = self.reuse_from
        src = os.path.join(other, f"{name}.json")
        if not os.path.exists(src):
            return False
        with open(os.path.join(other, "config.json")) as f:
            theirs = json.load(f)
        differ = [k for k in SHARED_SETTINGS if theirs.get(k) != self.cfg.get(k)]
        if differ:
            raise ValueError(f"--reuse-from {other}: its {differ} differ from this run's; its teacher-free phases "
                             "are not this run's (use a run with the same task, problems, distillation and evaluation)")
        out = os.path.dirname(self.kept)
        with open(src) as f:
            result = json.load(f)
        student = os.path.join(other, "students", result.get("name", ""))
        if result.get("name") and os.path.isdir(student):   # the student's folder, linked (the model is not copied)
            link = os.path.join(out, "students", result["name"])
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(student), link)
        with open(os.path.join(other, "records", f"{name}.json")) as f:
            rec = json.load(f)
        rec.update(reused_from={"run_id": rec.get("run_id"), "out": other}, run_id=self.run_id)
        os.makedirs(self.kept, exist_ok=True)
        for path, payload in ((os.path.join(self.kept, f"{name}.json"), rec), (os.path.join(out, f"{name}.json"),
                                                                                result)):
            with open(path + ".tmp", "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(path + ".tmp", path)
        log.info("phase %s: reused from %s (same task, problems, distillation and evaluation)", name, other)
        return True

    def start(self, name: str):
        from bench import record

        return record.start("evidence", variant=name, folder=self.kept, name=name, argv=self.argv)

    def write(self, session, numbers: dict) -> None:
        from bench import record

        path = record.write(session, numbers, config=self.cfg, seed=self.cfg["seed"], run_id=self.run_id)
        self.publish(os.path.basename(path)[:-5], force=True)

    def publish(self, name: str, force: bool = False) -> None:
        """Copy the kept record of ``name`` to the published folder (atomically) unless it is there already."""
        src, dst = os.path.join(self.kept, f"{name}.json"), os.path.join(self.folder, f"{name}.json")
        if os.path.abspath(src) == os.path.abspath(dst) or (os.path.exists(dst) and not force):
            return
        if not os.path.exists(src):
            log.warning("phase %s has no record (it finished before records were kept): rerun it in a new --out "
                        "to have one", name)
            return
        os.makedirs(self.folder, exist_ok=True)
        with open(src) as f, open(dst + ".tmp", "w") as g:
            g.write(f.read())
        os.replace(dst + ".tmp", dst)

    def drop_other_runs(self) -> None:
        """The published folder holds one run: records of another run are removed (git keeps them)."""
        if not os.path.isdir(self.folder) or os.path.abspath(self.folder) == os.path.abspath(self.kept):
            return
        for f in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, f)
            if not f.endswith(".json"):
                continue
            with open(path) as fh:
                rec = json.load(fh)
            if rec.get("bench") == "evidence" and rec.get("run_id") != self.run_id:
                log.warning("removing %s: a record of another run (%s)", path, rec.get("run_id"))
                os.remove(path)


# what the teacher-free phases depend on (Records.reuse): a run that differs in any of these cannot lend them
SHARED_SETTINGS = ("tiny", "task", "seed", "train_problems", "heldout_prompts", "distill_problems", "distill_steps",
                   "distill_batch", "distill_lr", "eval_items", "eval_max_new_tokens", "eval_batch", "eval_samples",
                   "eval_temperature")


def _teacher_free(name: str) -> bool:
    return name == "base_student" or any(name.startswith(f"student_{arm}_s")
                                         for arm in ("reference", "reference_thought", WORKED_ARM))


def _run_id(out: str) -> str:
    """The run's id, made once and kept in ``<out>/run.json``."""
    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump({"run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()}, f)
    with open(path) as f:
        return json.load(f)["run_id"]


class PhaseNotFinished(RuntimeError):
    """--stop-after finished met a phase the run has not finished."""


def _phase(records: Records, name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once: its JSON result is kept in ``out/<name>.json`` (written atomically) and reused after; its
    record goes to ``out/records/<name>.json`` and is published (:class:`Records`)."""
    out = os.path.dirname(records.kept)
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path) or records.reuse(name):
        log.info("phase %s: done earlier (%s)", name, path)
        records.publish(name)
        with open(path) as f:
            return json.load(f)
    if not records.compute:
        raise PhaseNotFinished(f"phase {name} is not finished in {out}; --stop-after finished computes nothing "
                               "(run without it to compute the phases)")
    log.info("phase %s: start", name)
    session = records.start(name)
    t0 = time.perf_counter()
    result = fn()
    result = {"seconds": round(time.perf_counter() - t0, 1), **result}
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    records.write(session, result)
    log.info("phase %s: %.0f s", name, result["seconds"])
    return result


class _LazyModel:
    """A model loaded on its first call, once."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._model = load, None

    def __call__(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model


def _model_dir(result: dict, phase: str, out: str) -> str:
    """The model folder phase ``phase`` saved, or a clear error when it is not there (a run restored from its
    records has the phase's result, not its model)."""
    path = result.get("model_dir", "")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"phase {phase} finished but its model {path!r} is not here (a run restored from its records keeps the "
            f"results, not the models): a phase that needs it cannot be computed in {out}; start a new --out")
    return path


def restore_run_folder(folder: str, out: str, cfg: dict) -> int:
    """Seed run folder ``out`` from the run's published records in ``folder`` (``--restore``): the checkout or the
    machine that held the run folder is gone, the committed records are not. Each record holds its phase's whole
    result (per-item outcomes, explanations with their reward terms), so every finished phase is taken as it was,
    under the run's own id, and the run continues with the phases it had not finished. Models are not in records:
    a phase that needs a lost model (a teacher not yet sampled from) stops with a clear error. Refused when the
    records are of another configuration (naming the fields) or of several runs; with no records, a new run starts.
    Returns the phases restored."""
    phases: dict[str, dict] = {}
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not f.endswith(".json") or f in NOT_PHASES:
            continue
        with open(os.path.join(folder, f)) as fh:
            rec = json.load(fh)
        if rec.get("bench") != "evidence" or not isinstance(rec.get("numbers"), dict) \
                or "seconds" not in rec["numbers"]:
            continue   # the summary, a probe's or the audit's record: not a phase
        phases[f[:-5]] = rec
    if not phases:
        log.info("--restore: no phase record in %s: a new run", folder)
        return 0
    run_ids = sorted({r["run_id"] for r in phases.values()})
    if len(run_ids) != 1:
        raise SystemExit(f"--restore: {folder} mixes the records of runs {run_ids}")
    # a phase reused from another run (--reuse-from: a settings run's base and reference students) carries that
    # run's configuration: only the settings it depends on must match
    differ = sorted({k for rec in phases.values()
                     for k in (SHARED_SETTINGS if rec.get("reused_from") else set(cfg) | set(rec["config"]))
                     if k != "out" and cfg.get(k) != rec["config"].get(k)})
    if differ:
        raise SystemExit(f"--restore: the records in {folder} are of another configuration ({differ} differ): "
                         "restore with the run's own profile and settings")
    os.makedirs(os.path.join(out, "records"), exist_ok=True)
    run_json = os.path.join(out, "run.json")
    if os.path.exists(run_json):
        with open(run_json) as f:
            if json.load(f)["run_id"] != run_ids[0]:
                raise SystemExit(f"--restore: {out} holds another run; restore into a new --out")
    else:
        with open(run_json, "w") as f:
            json.dump({"run_id": run_ids[0]}, f)
    restored = 0
    for name, rec in phases.items():
        if os.path.exists(os.path.join(out, f"{name}.json")):
            continue
        for path, payload in ((os.path.join(out, "records", f"{name}.json"), rec),
                              (os.path.join(out, f"{name}.json"), rec["numbers"])):
            with open(path + ".tmp", "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(path + ".tmp", path)
        restored += 1
    log.info("--restore: %d finished phases of run %s restored into %s from %s", restored, run_ids[0], out, folder)
    return restored


def _style():
    from rlt_core.prompts import PromptStyle

    # Same tags and layout as the paper; only the two ~250-token system prompts are shortened (CPU time).
    return PromptStyle(teacher_system_prompt=SHORT_TEACHER, student_system_prompt=SHORT_STUDENT)


def _tokenizer_and_builder(cfg: dict):
    """(tokenizer, make(path or None, seed) -> model): the builtin SmolLM2, or tiny random models (smoke)."""
    from infra.models import builtin_tokenizer_dir, resolve_model
    from rlt_core.modeling import load_causal_lm, load_tokenizer, tiny_causal_lm

    if cfg["tiny"]:
        tok = load_tokenizer(builtin_tokenizer_dir())

        def make(path: Optional[str], seed: int = 0):
            return load_causal_lm(path) if path else tiny_causal_lm(tok, seed=seed)
        return tok, make
    base = resolve_model("builtin:smollm2-135m-instruct").path
    tok = load_tokenizer(base)
    return tok, lambda path, seed=0: load_causal_lm(path or base)


def _reward_config(cfg: dict, batch: int, style):
    """The RLT reward of the run: the paper's recipe but for ``kl_coef`` (the weights of r_KL's mean and max terms;
    the paper's (3.0, 0.03) by default, smaller ones for question 5 of issue 24)."""
    from rlt_core.reward import RewardConfig

    return RewardConfig(batch_size=batch, prompt_style=style, kl_coef=tuple(cfg["kl_coef"]))


def _runtime(seed: int, save_steps: int = 100_000, keep_checkpoints: bool = False):
    from rlt_core.training.common import RuntimeSettings

    return RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed, save_steps=save_steps,
                           keep_checkpoints=keep_checkpoints)


def mean_ci(values: list[float], n_boot: int = 4000, seed: int = 0) -> dict:
    """Mean with a 95% percentile-bootstrap CI and a t interval (the unit resampled is the list element)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    t = stats.t.ppf(0.975, len(x) - 1) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95_bootstrap": [float(lo), float(hi)],
            "ci95_t": [float(x.mean() - t * se), float(x.mean() + t * se)], "n": int(len(x))}


# --------------------------------------------------------------------------------------------------- teacher side
def teacher_samples(teacher, student, tok, problems: list[dict], k: int, seed: int, cfg: dict, style) -> list[dict]:
    """``k`` explanations per problem (request seeds ``seed + 1000*i + j``), each scored with the RLT reward."""
    from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
    from rlt_core.prompts import format_teacher_prompt
    from rlt_core.reward import RLTReward

    prompts = [format_teacher_prompt(tok, p["question"], p["solution"], style) for p in problems]
    reqs = [GenRequest(f"{i}#{j}", prompts[i], seed + 1000 * i + j) for i in range(len(problems)) for j in range(k)]
    results = HFGenerator(teacher, tok, cfg["batch"]).generate(
        reqs, SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=cfg["max_new_tokens"]))
    idx = [(i, j) for i in range(len(problems)) for j in range(k)]
    reward = RLTReward(teacher, student, tok, _reward_config(cfg, cfg["batch"], style))
    scored = reward.score([problems[i]["question"] for i, _ in idx], [problems[i]["solution"] for i, _ in idx],
                          [r.text for r in results], prompts=[prompts[i] for i, _ in idx])
    rows = []
    for (i, j), res, b in zip(idx, results, scored):
        rows.append({"problem": i, "sample": j, "seed": seed + 1000 * i + j, "text": res.text,
                     "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
                     "has_format_penalty": float(b.format_penalty != 0),
                     **{t: float(getattr(b, t)) for t in ("reward", "r_ss", "r_kl", "format_penalty",
                                                          "answer_logprob_mean", "kl_mean", "n_explanation_tokens")}})
    return rows


def _explanation(text: str, style) -> str:
    from rlt_core.prompts import parse_teacher_completion

    return parse_teacher_completion(text, style).explanation


def group_diversity(rows: list[dict]) -> dict:
    """Distinct completions per problem and the within-problem reward std: GRPO's learning signal. With one
    distinct completion per group every advantage is 0 and no gradient flows (what the heavier warm-up caused)."""
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["problem"], []).append(r)

    def std(xs: list[float]) -> float:
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))

    return {"distinct_per_problem": sum(len({r["text"] for r in g}) for g in groups.values()) / len(groups),
            "samples_per_problem": sum(len(g) for g in groups.values()) / len(groups),
            "within_problem_reward_std": sum(std([r["reward"] for r in g]) for g in groups.values()) / len(groups)}


def answer_shown(rows: list[dict], problems: list[dict], style) -> list[dict]:
    """The rows with two flags of their explanation: ``answer_in_explanation`` (the reference's final answer appears
    in it as a number) and ``boxed_in_explanation`` (it holds a ``\\boxed{}``, i.e. copies the reference's form).
    An explanation that states the answer makes the student's solution likely (r_SS) whether or not it teaches."""
    out = []
    for r in rows:
        text = _explanation(r["text"], style)
        out.append({**r, "answer_in_explanation": float(states_answer(text, problems[r["problem"]]["answer"])),
                    "boxed_in_explanation": float("\\boxed" in text)})
    return out


def states_answer(text: str, answer: str) -> bool:
    """The final answer appears in the text as a number (3 is not in -3, 13 or 3.5)."""
    import re

    return re.search(rf"(?<![\d.-]){re.escape(answer)}(?![\d.])", text) is not None


def paired_reward_change(before: list[dict], after: list[dict]) -> dict:
    """Per held-out problem: mean reward over its samples after minus before (same seeds); CI over problems."""
    def per_problem(rows: list[dict], key: str) -> dict[int, float]:
        acc: dict[int, list[float]] = {}
        for r in rows:
            acc.setdefault(r["problem"], []).append(r[key])
        return {p: sum(v) / len(v) for p, v in acc.items()}

    out = {"diversity": {"before": group_diversity(before), "after": group_diversity(after)}}
    keys = ("reward", "r_ss", "r_kl", "has_format_penalty", "n_explanation_tokens", "answer_in_explanation",
            "boxed_in_explanation")
    for key in (k for k in keys if k in before[0] and k in after[0]):
        b, a = per_problem(before, key), per_problem(after, key)
        out[key] = {"before": mean_ci(list(b.values())), "after": mean_ci(list(a.values())),
                    "difference": mean_ci([a[p] - b[p] for p in sorted(b)])}
    return out


# --------------------------------------------------------------------------------------------------- student side
def eval_items(cfg: dict, split: str = "heldout") -> list:
    """The first ``eval_items`` items of the task's held-out benchmark (the test items the report quotes), or of
    its validation benchmark (``split="validation"``: the items settings are chosen on)."""
    import rlt_core.benchmarks as bm

    spec = bm.get_benchmark(f"{cfg['task']}-{split}").model_copy(update={"n": cfg["eval_items"]})
    return bm.benchmark_items(spec, bm.load_benchmark_rows(spec))


def student_prompt(tok, text: str, style) -> str:
    """The student's evaluation prompt: its system prompt + the item (which carries the boxed instruction)."""
    return tok.apply_chat_template([{"role": "system", "content": style.student_system_prompt},
                                    {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def evaluate_student(model, tok, items: list, cfg: dict, style, sampled: bool = True) -> dict:
    """Greedy answers to the held-out items (student system prompt + the boxed instruction), graded; with
    ``sampled`` and ``eval_samples`` > 0 also ``eval_samples`` answers per item at ``eval_temperature`` (request
    seeds ``30_000 + 1000*item + j``, the same for every student): per item the number correct, for avg@k and
    pass@k. Greedy decoding alone cannot tell an explanation that teaches from a student stuck in the empty-thought
    trap (docs/results.md, round 1); the samples can."""
    from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
    from rlt_core.grading import get_grader

    prompts = [student_prompt(tok, it.prompt, style) for it in items]
    gen = HFGenerator(model, tok, cfg["eval_batch"])
    results = gen.generate([GenRequest(it.item_id, p, 0) for it, p in zip(items, prompts)],
                           SamplingConfig(temperature=0.0, max_new_tokens=cfg["eval_max_new_tokens"]))
    grader = get_grader(items[0].grader)
    graded = [grader(r.text, it.reference, **it.grader_args) for r, it in zip(results, items)]
    correct = [bool(g.correct) for g in graded]
    out = {"accuracy": mean_ci([float(c) for c in correct]), "correct": correct,
           "truncated": sum(r.finish_reason == "length" for r in results),
           "mean_completion_tokens": sum(r.completion_tokens for r in results) / len(results),
           "examples": [{"prompt": it.prompt, "response": r.text, "reference": it.reference, "correct": c}
                        for it, r, c in list(zip(items, results, correct))[:3]]}
    k = int(cfg.get("eval_samples", 0)) if sampled else 0
    if k > 0:
        reqs = [GenRequest(f"{it.item_id}#{j}", p, 30_000 + 1000 * i + j)
                for i, (it, p) in enumerate(zip(items, prompts)) for j in range(k)]
        sampled_res = gen.generate(reqs, SamplingConfig(temperature=cfg["eval_temperature"], top_p=1.0,
                                                        max_new_tokens=cfg["eval_max_new_tokens"]))
        ok = [bool(grader(r.text, items[n // k].reference, **items[n // k].grader_args).correct)
              for n, r in enumerate(sampled_res)]
        out["sampled_correct"] = [sum(ok[i * k:(i + 1) * k]) for i in range(len(items))]
        out["samples_per_item"] = k
        out["sampled_truncated"] = sum(r.finish_reason == "length" for r in sampled_res)
    return out


def distill_and_eval(name: str, rows: list[dict], tok, make, items: list, cfg: dict, style, out: str,
                     seed: int = 0, sampled: bool = True) -> dict:
    """One student distilled on ``rows`` with training seed ``seed`` (data order; the tiny profile's random
    initialisation too), then evaluated (:func:`evaluate_student`). Its model is kept in ``out/students/<name>``."""
    from rlt_core.training.distill import DistillConfig, distill_student

    student = make(None, 1 + seed)
    dcfg = DistillConfig(learning_rate=cfg["distill_lr"], lr_scheduler_type="cosine", warmup_ratio=0.1,
                         batch_size=cfg["distill_batch"], per_device_batch_size=cfg["distill_batch"],
                         max_length=768, max_steps=cfg["distill_steps"], style=style, runtime=_runtime(seed))
    res = distill_student(student, tok, rows, dcfg, os.path.join(out, "students", name), resume=False)
    result = evaluate_student(student.eval(), tok, items, cfg, style, sampled=sampled)
    return {"name": name, "seed": seed, "model_dir": res.model_dir, "rows": len(rows), "steps": res.steps,
            "final_loss": res.final_loss,
            "train_tokens_in": res.tokens_in, "train_tokens_out": res.tokens_out, **result}


def paired_difference(a: list[bool], b: list[bool]) -> dict:
    """accuracy(a) - accuracy(b) on the same items, with a bootstrap CI over items."""
    return mean_ci([float(x) - float(y) for x, y in zip(a, b)])


def seeds_items_ci(matrix: list[list[float]], n_boot: int = 4000, seed: int = 0) -> dict:
    """Mean of a seeds x items matrix with a 95% CI that covers training and items: each bootstrap draw resamples
    the seeds (training runs) and, independently, the items (the same drawn items for every seed, so a paired
    matrix keeps its pairing). ``per_seed``: each seed's mean over items."""
    import numpy as np

    x = np.asarray(matrix, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty seeds x items matrix, got shape {x.shape}")
    n_seeds, n_items = x.shape
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):   # (a (n_boot, seeds, items) gather would hold 4000 x 3 x 200 floats: fine, but slower)
        boot[b] = x[rng.integers(0, n_seeds, n_seeds)][:, rng.integers(0, n_items, n_items)].mean()
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95_bootstrap": [float(lo), float(hi)], "n": int(n_items),
            "seeds": int(n_seeds), "per_seed": [float(v) for v in x.mean(axis=1)]}


def arm_stats(runs: dict[str, list[dict]], base: dict, baselines: tuple[str, ...] = ("reference",
                                                                                     "reference_thought")) -> dict:
    """Per arm, over its seeds: greedy accuracy, avg@k and pass@k (k = every sample of an item), each with
    :func:`seeds_items_ci`; paired differences to the baseline arms (seed i against seed i, item against item) and
    to the base student; the training budget (rows, tokens) and truncation, averaged over seeds."""
    from rlt_core.eval_metrics import pass_at_k

    def greedy(rs: list[dict]) -> list[list[float]]:
        return [[float(c) for c in r["correct"]] for r in rs]

    def sampled(rs: list[dict], kind: str) -> Optional[list[list[float]]]:
        if not all("sampled_correct" in r for r in rs):
            return None
        k = rs[0]["samples_per_item"]
        return [[c / k if kind == "avg" else pass_at_k(k, c, k) for c in r["sampled_correct"]] for r in rs]

    def diff(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
        n = min(len(a), len(b))
        return [[x - y for x, y in zip(a[i], b[i])] for i in range(n)]

    def mean(rs: list[dict], key: str) -> Optional[float]:
        vals = [r[key] for r in rs if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    base_row = [float(c) for c in base["correct"]]
    out = {}
    for name, rs in runs.items():
        g = greedy(rs)
        s: dict[str, Any] = {"accuracy": seeds_items_ci(g), "vs_base": seeds_items_ci([[x - y for x, y in
                                                                                       zip(row, base_row)]
                                                                                      for row in g])}
        for kind in ("avg", "pass"):
            m = sampled(rs, kind)
            if m is not None:
                s[f"{kind}_at_k"] = seeds_items_ci(m)
                s["k"] = rs[0]["samples_per_item"]
        for ref in baselines:
            if ref in runs and ref != name:
                s[f"vs_{ref}"] = seeds_items_ci(diff(g, greedy(runs[ref])))
                m, mr = sampled(rs, "avg"), sampled(runs[ref], "avg")
                if m is not None and mr is not None:
                    s[f"avg_at_k_vs_{ref}"] = seeds_items_ci(diff(m, mr))
        s.update({key: mean(rs, key) for key in ("final_loss", "truncated", "rows", "train_tokens_in",
                                                 "train_tokens_out", "mean_completion_tokens")})
        out[name] = s
    return out


# The reward's own pick among the trained teacher's K samples against the picks made without it (sample 0, a
# seeded random one: the K samples are drawn alike, so both are random picks) or against it (the worst):
# (minuend, subtrahend) pairs of teacher arms.
SELECTION_PAIRS = (("trained_best_of_k", "trained"), ("trained_best_of_k", "trained_random_of_k"),
                   ("trained_best_of_k", "trained_worst_of_k"), ("trained_random_of_k", "trained_worst_of_k"))


def selection_stats(runs: dict[str, list[dict]], base: dict) -> dict:
    """Does picking by reward help? For each pair of :data:`SELECTION_PAIRS` whose arms have all their seeds: the
    paired difference (seed i against seed i, item against item; :func:`seeds_items_ci`), greedy and avg@k, named
    ``best_minus_sample0``, ``best_minus_random``, ``best_minus_worst``, ``random_minus_worst``. Empty when no pair
    is finished."""
    pairs = [(a, b) for a, b in SELECTION_PAIRS if a in runs and b in runs]
    if not pairs:
        return {}
    picks = sorted({arm for pair in pairs for arm in pair})
    stats = arm_stats({a: runs[a] for a in picks}, base, baselines=tuple(b for _, b in pairs))

    def short(arm: str) -> str:
        return "sample0" if arm == "trained" else arm.removeprefix("trained_").removesuffix("_of_k")

    return {f"{short(a)}_minus_{short(b)}": {"greedy": stats[a][f"vs_{b}"],
                                             "avg_at_k": stats[a].get(f"avg_at_k_vs_{b}")} for a, b in pairs}


def reward_bins(rows: list[dict], n_bins: int) -> list[list[dict]]:
    """The rows sorted by reward, cut into ``n_bins`` bins of equal size (the ``len % n_bins`` highest-reward rows
    are left out, so every bin's student gets the same number of rows)."""
    if n_bins < 2 or len(rows) < n_bins:
        raise ValueError(f"{len(rows)} rows cannot make {n_bins} reward bins (need at least 2 bins, 1 row each)")
    ranked = sorted(rows, key=lambda r: r["reward"])
    q = len(ranked) // n_bins
    return [ranked[i * q:(i + 1) * q] for i in range(n_bins)]


def add_run_folder_args(p: argparse.ArgumentParser) -> None:
    """``--out`` and ``--records`` of a script that reads an evidence run folder (the probes, the audit)."""
    p.add_argument("--out", required=True, help="the experiments/evidence.py run folder")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="publish the record here (default: docs/results/evidence for the main full-profile run, "
                        "docs/results/evidence-settings/<name> for a settings run, else <out>/records only)")


def run_folder_records(out: str, records: Optional[str], argv: Optional[list[str]]) -> tuple[dict, "Records"]:
    """(the run's config, where a script reading run folder ``out`` publishes its record): ``records``, else the
    folder the run's own phases publish to."""
    config = os.path.join(out, "config.json")
    if not os.path.exists(config):
        raise SystemExit(f"--out {out}: no config.json: not an experiments/evidence.py run folder")
    with open(config) as f:
        cfg = json.load(f)
    if records is None:
        if cfg.get("profile") != "full":
            records = os.path.join(out, "records")
        elif cfg.get("setting"):
            records = os.path.join(SETTINGS_RECORDS, cfg["setting"])
        else:
            records = RECORDS
    return cfg, Records(out, records, cfg, argv)


def problem_sets(cfg: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint problem sets of a run: GRPO prompts, teacher-side held-out prompts (also train partition, never
    trained on), distillation problems; student evaluation items come from the eval partition (:func:`eval_items`)."""
    from rlt_core.builtin_problems import generate

    n_train, n_held = cfg["train_problems"], cfg["heldout_prompts"]
    pool = generate(cfg["task"], n_train + n_held + cfg["distill_problems"], cfg["seed"])
    return pool[:n_train], pool[n_train:n_train + n_held], pool[n_train + n_held:]


# How each trained-teacher arm picks one of a problem's K samples.
TEACHER_PICKS = ("trained", "trained_random_of_k", "trained_best_of_k", "trained_worst_of_k")


def teacher_arm_samples(rows: list[dict], arm: str, seed: int) -> list[dict]:
    """One of the trained teacher's K samples per distillation problem, in problem order: sample 0 (``trained``),
    a seeded random one, the highest- or the lowest-reward one."""
    by_problem: dict[int, list[dict]] = {}
    for r in rows:
        by_problem.setdefault(r["problem"], []).append(r)
    groups = [v for _, v in sorted(by_problem.items())]
    if arm == "trained":
        return [g[0] for g in groups]
    if arm == "trained_random_of_k":
        pick = random.Random(seed + 7)   # the random-of-K arm's draw: seeded, independent of the sample order
        return [pick.choice(g) for g in groups]
    if arm in ("trained_best_of_k", "trained_worst_of_k"):
        choose = max if arm == "trained_best_of_k" else min
        return [choose(g, key=lambda r: r["reward"]) for g in groups]
    raise ValueError(f"arm {arm!r}: expected one of {TEACHER_PICKS}")


# ----------------------------------------------------------------------------------------------------------- flow
def run(cfg: dict, stop_after: Optional[str] = None, records: Optional[Records] = None) -> dict:
    """All phases (``stop_after="teacher"``: only the teacher side, claim 1; a later run continues from there).
    ``records``: where the phase records go (default: ``<out>/records`` only)."""
    import torch

    from rlt_core.training.common import LoraSettings
    from rlt_core.training.grpo import TeacherGRPOConfig, train_teacher_grpo
    from rlt_core.training.sft_teacher import TeacherSFTConfig, train_teacher_sft

    out, seed = cfg["out"], cfg["seed"]
    os.makedirs(out, exist_ok=True)
    records = records or Records(out, os.path.join(out, "records"), cfg, None)
    summary = records.start("summary")
    torch.manual_seed(seed)
    style = _style()
    tok, make = _tokenizer_and_builder(cfg)
    grpo_rows, heldout, distill_problems = problem_sets(cfg)
    items = eval_items(cfg)
    student = make(None, 1).eval()
    from rlt_core.prompts import wrap_solution

    reference_rows = [{"system": style.student_system_prompt, "question": p["question"],
                       "assistant": wrap_solution(p["solution"], style)} for p in distill_problems]
    # The reward's student (question 3 of issue 24): the base model (the paper's setup at 7B, where the student can
    # follow an explanation), or a distilled student that can follow this task's steps better than the base model:
    # the one distilled on the reference solutions (`reference`; on a terse task they are the answer alone) or, on a
    # terse task, the one distilled on the worked derivations (`worked`): the claim-2 arm's seed 0, trained first
    # and reused there.
    worked_rows = [{"question": p["question"], "solution": p["solution"], "explanation": p.get("worked_solution")}
                   for p in distill_problems]
    if cfg["reward_student"] in ("reference", "worked"):
        arm, rows = ("reference", reference_rows) if cfg["reward_student"] == "reference" else (WORKED_ARM, worked_rows)
        if arm == WORKED_ARM and worked_rows[0]["explanation"] is None:
            raise ValueError(f"reward_student 'worked' needs a task with worked derivations; {cfg['task']!r} has none")
        ref = _phase(records, f"student_{arm}_s0", lambda: distill_and_eval(
            f"{arm}_s0", rows, tok, make, items, cfg, style, out, seed=seed))
        reward_student = _LazyModel(lambda: make(_model_dir(ref, f"student_{arm}_s0", out)).eval())
    elif cfg["reward_student"] == "base":
        reward_student = _LazyModel(lambda: student)
    else:
        raise ValueError(f"reward_student {cfg['reward_student']!r}: expected 'base', 'reference' or 'worked'")

    sft_dir = os.path.join(out, "teacher_sft")

    def sft() -> dict:
        teacher = make(None, 0)
        # the warm-up trace: a terse task's worked derivation; else the (worked) solution doubles as it (round 1)
        rows = [{**p, "reasoning_trace": p.get("worked_solution")} for p in grpo_rows]
        res = train_teacher_sft(teacher, tok, rows, TeacherSFTConfig(
            max_steps=cfg["sft_steps"], batch_size=4, per_device_batch_size=4, learning_rate=cfg["sft_lr"],
            warmup_ratio=0.0, max_length=768, style=style, runtime=_runtime(seed)), sft_dir, resume=False)
        return {"steps": res.steps, "final_loss": res.final_loss, "model_dir": res.model_dir}

    sft_res = _phase(records, "teacher_sft", sft)
    # the teachers (and a distilled reward student) are loaded when a phase needs them: a run restored from its
    # records (--restore) has the results of the finished phases but not their models
    untrained = _LazyModel(lambda: make(_model_dir(sft_res, "teacher_sft", out)).eval())
    k = cfg["heldout_samples"]
    before = _phase(records, "heldout_before", lambda: {"rows": teacher_samples(untrained(), reward_student(), tok,
                                                                                 heldout, k, 10_000, cfg, style)})

    def grpo() -> dict:
        from bench.teacher_rl import _summary, plot_reward_terms

        policy = make(_model_dir(sft_res, "teacher_sft", out)).train()
        # GRPO checkpoints every 10 steps (smaller runs: twice; LoRA adapter + optimizer, a few MB, kept after the
        # run) and a killed run resumes from the newest (an hour of CPU is not redone); the per-step metrics are
        # kept beside them, so the history up to the checkpoint survives the resume
        from rlt_core.training.common import resume_checkpoint

        grpo_dir = os.path.join(out, "grpo")
        kept = os.path.join(grpo_dir, "history.json")
        history: dict[int, dict[str, float]] = {}
        ckpt = resume_checkpoint(grpo_dir, True)
        if ckpt and os.path.exists(kept):
            at = int(ckpt.rsplit("-", 1)[1])
            with open(kept) as f:
                history = {int(step): h for step, h in json.load(f).items() if int(step) <= at}
            log.info("grpo: resuming at step %d; %d logged steps kept from the cut run", at, len(history))
        samples: list[str] = []

        def log_metric(name: str, value: float, step: int) -> None:
            history.setdefault(step, {})[name] = value
            if name == "rlt/step_seconds":
                os.makedirs(grpo_dir, exist_ok=True)
                with open(kept + ".tmp", "w") as f:
                    json.dump(history, f)
                os.replace(kept + ".tmp", kept)
                h = history[step]
                log.info("grpo step %d/%d reward %.3f r_ss %.3f r_kl %.3f fmt %.2f tokens %.0f (%.1f s)", step,
                         cfg["grpo_steps"], h.get("rlt/reward/mean", math.nan), h.get("rlt/r_ss/mean", math.nan),
                         h.get("rlt/r_kl/mean", math.nan), h.get("rlt/format_penalty/mean", math.nan),
                         h.get("rlt/n_explanation_tokens/mean", math.nan), value)

        n = cfg["group"] * cfg["prompts_per_step"]
        gcfg = TeacherGRPOConfig(num_generations=cfg["group"], prompts_per_step=cfg["prompts_per_step"],
                                 per_device_batch_size=n, learning_rate=cfg["lr"], beta=cfg["beta"],
                                 max_completion_length=cfg["max_new_tokens"], max_prompt_length=2048,
                                 max_steps=cfg["grpo_steps"], sync_ref_model=False,
                                 lora=LoraSettings(r=cfg["lora_r"], alpha=2 * cfg["lora_r"]), samples_per_log=2,
                                 sample_every=10,
                                 runtime=_runtime(seed, save_steps=max(1, min(10, cfg["grpo_steps"] // 2)),
                                                  keep_checkpoints=True))
        t0 = time.perf_counter()
        res = train_teacher_grpo(policy, reward_student(), tok, grpo_rows, gcfg,
                                 _reward_config(cfg, n, style), grpo_dir,
                                 log_metric, lambda name, text, step: samples.append(f"=== step {step}\n{text}"),
                                 resume=True)
        summary = _summary(history, time.perf_counter() - t0, {})
        plot_reward_terms(history, os.path.join(out, "reward_terms.png"), summary)
        with open(os.path.join(out, "grpo_samples.txt"), "w") as f:
            f.write("\n\n".join(samples))
        return {"steps": res.steps, "model_dir": res.model_dir, "summary": summary,
                "history": {str(s): h for s, h in sorted(history.items())}}

    grpo_res = _phase(records, "grpo", grpo)
    trained = _LazyModel(lambda: make(_model_dir(grpo_res, "grpo", out)).eval())
    after = _phase(records, "heldout_after", lambda: {"rows": teacher_samples(trained(), reward_student(), tok,
                                                                               heldout, k, 10_000, cfg, style)})
    change = paired_reward_change(*(answer_shown(rows, heldout, style) for rows in (before["rows"], after["rows"])))
    teacher_results = {"config": cfg, "heldout_reward": change,
                       "grpo": {**grpo_res["summary"], "steps": grpo_res["steps"], "seconds": grpo_res["seconds"]}}
    if stop_after in ("teacher", "finished"):
        results = teacher_results if stop_after == "teacher" else _finished_students(cfg, teacher_results, out)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(report_markdown(results))
        records.write(summary, _summary_numbers(results, out))
        if "students" in results:
            plots.students(results, os.path.join(out, "students.png"))
        return results

    _phase(records, "base_student", lambda: evaluate_student(student, tok, items, cfg, style))

    # ---- distillation data
    expl_u = _phase(records, "explanations_untrained", lambda: {"rows": teacher_samples(
        untrained(), reward_student(), tok, distill_problems, 1, 20_000, cfg, style)})
    expl_t = _phase(records, "explanations_trained", lambda: {"rows": teacher_samples(
        trained(), reward_student(), tok, distill_problems, cfg["best_of_k"], 20_000, cfg, style)})

    def rows_of(samples: list[dict]) -> list[dict]:
        return [{"question": distill_problems[r["problem"]]["question"],
                 "solution": distill_problems[r["problem"]]["solution"],
                 # an empty explanation (rare after the warm-up) cannot be a training row as-is: marked, counted
                 "explanation": _explanation(r["text"], style).strip() or EMPTY} for r in samples]

    builders: dict[str, Callable[[], list[dict]]] = {
        "reference": lambda: reference_rows,
        # the same student format as the explanation arms: the reference solution is the thought, then the solution
        "reference_thought": lambda: [{"question": p["question"], "solution": p["solution"],
                                       "explanation": p["solution"]} for p in distill_problems],
        "untrained": lambda: rows_of(expl_u["rows"]),
        **{arm: lambda arm=arm: rows_of(teacher_arm_samples(expl_t["rows"], arm, seed)) for arm in TEACHER_PICKS},
        WORKED_ARM: lambda: worked_rows,
    }
    unknown = [a for a in cfg["arms"] if a not in builders]
    if unknown or "reference" not in cfg["arms"]:
        raise ValueError(f"arms {cfg['arms']}: expected 'reference' and names from {sorted(builders)}")
    if WORKED_ARM in cfg["arms"] and worked_rows[0]["explanation"] is None:
        raise ValueError(f"arm {WORKED_ARM!r} needs a task with worked derivations (a terse builtin task); "
                         f"{cfg['task']!r} has none: leave the arm out (--set arms=...)")
    done: dict[str, list[dict]] = {}

    def arm_students(name: str) -> None:
        rows = builders[name]()
        for i in range(cfg["distill_seeds"]):
            done.setdefault(name, []).append(_phase(
                records, f"student_{name}_s{i}", lambda rows=rows, name=name, i=i: distill_and_eval(
                    f"{name}_s{i}", rows, tok, make, items, cfg, style, out, seed=seed + i)))

    order = sorted(cfg["arms"], key=lambda a: RUN_ORDER.index(a) if a in RUN_ORDER else len(RUN_ORDER))
    for name in order:
        if name not in CONTROL_ARMS:
            arm_students(name)
    # claim 3: one student per reward bin of the trained teacher's K x M explanations (training seed 0, greedy);
    # reward_bins 0 leaves it out (a settings run that asks claims 1-2 only)
    bins = reward_bins(expl_t["rows"], cfg["reward_bins"]) if cfg["reward_bins"] else []
    bin_students = [_phase(records, f"student_bin_{i + 1}of{len(bins)}",
                           lambda b=b, i=i: distill_and_eval(f"bin_{i + 1}of{len(bins)}", rows_of(b), tok, make,
                                                             items, cfg, style, out, seed=seed, sampled=False))
                    for i, b in enumerate(bins)]
    for name in order:
        if name in CONTROL_ARMS:
            arm_students(name)
    runs = {name: done[name] for name in cfg["arms"]}
    base = _phase(records, "base_student", lambda: {})
    results = {**teacher_results, "base_student": _base_stats(base), "students": arm_stats(runs, base),
               **_selection(runs, base), **({"bins": _bin_stats(bins, bin_students)} if bins else {}),
               "phase_seconds": _phase_seconds(out)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    records.write(summary, _summary_numbers(results, out))
    plots.students(results, os.path.join(out, "students.png"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_markdown(results))
    return results


def _selection(runs: dict[str, list[dict]], base: dict) -> dict:
    """``{"selection": ...}`` (:func:`selection_stats`) when a pair of teacher picks is finished, else nothing."""
    sel = selection_stats(runs, base)
    return {"selection": sel} if sel else {}


def _base_stats(base: dict) -> dict:
    """The base student's greedy accuracy and truncation, with avg@k and pass@k when it was sampled."""
    stats = {k: base[k] for k in ("accuracy", "truncated")}
    if "sampled_correct" in base:
        from rlt_core.eval_metrics import pass_at_k

        k = base["samples_per_item"]
        stats.update(k=k, avg_at_k=mean_ci([c / k for c in base["sampled_correct"]]),
                     pass_at_k=mean_ci([pass_at_k(k, c, k) for c in base["sampled_correct"]]))
    return stats


def _finished_students(cfg: dict, teacher_results: dict, out: str) -> dict:
    """``--stop-after finished``: the teacher side and the arms whose every seed is finished (a run still going, or
    cut short), with the arms still pending named; the reward bins once all their students are done. Computes
    nothing."""
    def done(name: str) -> Optional[dict]:
        path = os.path.join(out, f"{name}.json")
        return json.load(open(path)) if os.path.exists(path) else None

    base = done("base_student")
    if base is None:
        return teacher_results
    runs, pending = {}, []
    for name in cfg["arms"]:
        rs = [done(f"student_{name}_s{i}") for i in range(cfg["distill_seeds"])]
        if all(r is not None for r in rs):
            runs[name] = rs
        else:
            pending.append(name)
    result = {**teacher_results, "base_student": _base_stats(base), "students": arm_stats(runs, base),
              **_selection(runs, base), "pending_arms": pending}
    expl_t, n = done("explanations_trained"), cfg["reward_bins"]
    bin_students = [done(f"student_bin_{i + 1}of{n}") for i in range(n)]
    if expl_t is not None and n and all(b is not None for b in bin_students):   # claim 3 is finished: its bins
        result["bins"] = _bin_stats(reward_bins(expl_t["rows"], n), bin_students)
    return result


def _summary_numbers(results: dict, out: str) -> dict:
    """The statistics the documents quote (results.json less the config, which every record carries), plus every
    finished phase's wall time."""
    return {**{k: v for k, v in results.items() if k != "config"}, "phase_seconds": _phase_seconds(out)}


def _phase_seconds(out: str) -> dict[str, float]:
    """Every finished phase's wall time (the run folder's phase results)."""
    return {f[:-5]: json.load(open(os.path.join(out, f)))["seconds"]
            for f in sorted(os.listdir(out)) if f.endswith(".json") and f not in NOT_PHASES}


def _bin_stats(bins: list[list[dict]], students: list[dict]) -> dict:
    """Claim 3: each reward bin's mean reward against its student's greedy accuracy (CI over items); Pearson and
    Spearman over the bins, each with its p-value (None when every bin's student has the same accuracy); and two
    paired tests over the evaluation items (bootstrap CI): the top bin's student minus the bottom bin's, and the
    upper half of the bins' students minus the lower half (per item, the mean over each half's students)."""
    from scipy import stats

    rewards = [sum(r["reward"] for r in b) / len(b) for b in bins]
    accs = [s["accuracy"]["mean"] for s in students]
    pearson = stats.pearsonr(rewards, accs) if len(set(accs)) > 1 else None
    spearman = stats.spearmanr(rewards, accs) if len(set(accs)) > 1 else None
    half = len(students) // 2

    def half_mean(group: list[dict]) -> list[float]:
        return [sum(float(s["correct"][i]) for s in group) / len(group) for i in range(len(group[0]["correct"]))]

    return {"n_bins": len(bins), "rows_per_bin": len(bins[0]), "mean_reward": rewards,
            "top_minus_bottom": paired_difference(students[-1]["correct"], students[0]["correct"]),
            "upper_minus_lower_half": mean_ci([u - lo for u, lo in zip(half_mean(students[-half:]),
                                                                        half_mean(students[:half]))]),
            "reward_range": [[b[0]["reward"], b[-1]["reward"]] for b in bins],
            "accuracy": accs, "accuracy_ci": [s["accuracy"]["ci95_bootstrap"] for s in students],
            "truncated": [s["truncated"] for s in students],
            "pearson": None if pearson is None else [float(pearson[0]), float(pearson[1])],
            "spearman": None if spearman is None else [float(spearman[0]), float(spearman[1])]}


def _fmt_ci(m: dict, pct: bool = False) -> str:
    f = 100.0 if pct else 1.0
    lo, hi = m["ci95_bootstrap"]
    return f"{m['mean'] * f:+.3f} [{lo * f:+.3f}, {hi * f:+.3f}]" if not pct else \
        f"{m['mean'] * f:.1f}% [{lo * f:.1f}, {hi * f:.1f}]"


def report_markdown(r: dict) -> str:
    h = r["heldout_reward"]
    lines = ["### Teacher: held-out RLT reward before and after GRPO (mean over problems, 95% bootstrap CI)", "",
             "| term | before | after | after - before |", "|---|---|---|---|"]
    for key, row in h.items():
        if key == "diversity":
            continue
        lines.append(f"| {key} | {_fmt_ci(row['before'])} | {_fmt_ci(row['after'])} | {_fmt_ci(row['difference'])} |")
    d = h["diversity"]
    lines += ["", "Distinct completions per problem (of {:.0f}) before / after: {:.2f} / {:.2f}; within-problem reward "
              "std: {:.3f} / {:.3f}".format(d["before"]["samples_per_problem"], d["before"]["distinct_per_problem"],
                                           d["after"]["distinct_per_problem"], d["before"]["within_problem_reward_std"],
                                           d["after"]["within_problem_reward_std"])]
    g = r["grpo"]
    lines += ["", f"GRPO: {g['steps']} steps in {g['seconds']:.0f} s (median {g.get('step_seconds_median') or 0:.1f}"
              " s/step)."]
    if "students" not in r:
        return "\n".join(lines + [""])
    b = r["base_student"]
    seeds = next(iter(r["students"].values()))["accuracy"]["seeds"]
    lines += ["", f"### Students: held-out accuracy ({seeds} training seeds per arm; 95% CI over seeds and items)",
              "", "| student | greedy | avg@k | pass@k | greedy vs reference | greedy vs reference as thought | "
                  "train tokens |", "|---|---|---|---|---|---|---|",
              f"| base (no distillation) | {_fmt_ci(b['accuracy'], True)} | "
              f"{_fmt_ci(b['avg_at_k'], True) if 'avg_at_k' in b else '-'} | "
              f"{_fmt_ci(b['pass_at_k'], True) if 'pass_at_k' in b else '-'} | | | |"]
    for name, s in r["students"].items():
        cells = [_fmt_ci(s[key], True) if key in s else "-" for key in ("accuracy", "avg_at_k", "pass_at_k",
                                                                           "vs_reference", "vs_reference_thought")]
        lines.append(f"| {name} | {' | '.join(cells)} | {(s['train_tokens_in'] or 0) / 1000:.1f}k |")
    if "bins" not in r:
        bins_too = "; the reward bins too" if r.get("config", {}).get("reward_bins") else ""
        note = (f"(partial: arms still training: {', '.join(r['pending_arms'])}{bins_too})"
                if r.get("pending_arms") else "(no reward bins: `reward_bins` 0)")
        return "\n".join(lines + ["", note, ""])
    if r.get("pending_arms"):
        lines += ["", f"(partial: arms still training: {', '.join(r['pending_arms'])})"]
    qs = r["bins"]
    lines += ["", f"### {qs['n_bins']} reward bins of the trained teacher's explanations ({qs['rows_per_bin']} rows "
                  "each, one student per bin)", "", "| bin | mean reward | student accuracy |", "|---|---|---|"]
    for i in range(qs["n_bins"]):
        lo, hi = qs["accuracy_ci"][i]
        lines.append(f"| {i + 1} | {qs['mean_reward'][i]:.3f} | {100 * qs['accuracy'][i]:.1f}% "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] |")
    lines += ["", f"Correlation of the bins' mean reward with their student's accuracy ({qs['n_bins']} bins): "
                  f"{plots.corr_text(qs)}", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="the run folder (default .scratch/evidence; with --setting NAME "
                   ".scratch/evidence-NAME)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--setting", choices=sorted(SETTINGS), default=None,
                   help="a settings run of issue 24 (KL weights, the reward's student) on top of the profile: "
                        f"{SETTINGS_BASE} and the setting's overrides; publishes to docs/results/evidence-settings/"
                        "NAME (full profile) and reuses the main run's teacher-free phases")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value (JSON value), e.g. --set grpo_steps=120 --set lr=1e-4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--records", default=None, metavar="DIR",
                   help="publish the phase records here (default: docs/results/evidence for the full profile, "
                        "else <out>/records only)")
    p.add_argument("--reuse-from", default=None, metavar="OUT",
                   help="take the teacher-free phases (base student; reference, reference-as-thought and "
                        "worked-derivation students) from another run's --out folder with the same task, problems, "
                        "distillation and evaluation settings, e.g. a KL-weight run reusing the main run's")
    p.add_argument("--restore", action="store_true",
                   help="continue a run whose --out folder is gone (a fresh checkout or machine) from its published "
                        "records (--records): every finished phase is taken from its record, the rest is computed "
                        "(models are not in records: a phase that needs a lost teacher model stops with an error); "
                        "refused when the records are of another configuration; no records: a new run")
    p.add_argument("--stop-after", choices=["teacher", "finished"], default=None,
                   help="teacher: stop after the teacher side (claim 1); rerun without it to continue with the "
                        "students. finished: compute nothing; summarize what the run has finished (the teacher side "
                        "and every arm whose seeds are all done, the others named as pending), e.g. while it runs")
    args = p.parse_args(argv)
    main_out = ".scratch/evidence"
    if args.setting:
        args.out = args.out or f"{main_out}-{args.setting}"
        if args.reuse_from is None and args.profile == "full" and os.path.isdir(main_out):
            args.reuse_from = main_out
        if args.records is None and args.profile == "full":
            args.records = os.path.join(SETTINGS_RECORDS, args.setting)
    args.out = args.out or main_out
    cfg = dict(PROFILES[args.profile], out=args.out, seed=args.seed, profile=args.profile)
    if args.setting:
        cfg.update(SETTINGS_BASE, **SETTINGS[args.setting], setting=args.setting)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in PROFILES["full"]:
            p.error(f"--set {key}: unknown key; expected one of {sorted(PROFILES['full'])}")
        cfg[key] = json.loads(value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    random.seed(args.seed)
    folder = args.records or (RECORDS if args.profile == "full" else os.path.join(args.out, "records"))
    if args.restore:
        restore_run_folder(folder, args.out, cfg)
    saved = os.path.join(args.out, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            if json.load(f) != cfg:
                p.error(f"{args.out} holds a run with another configuration ({saved}); use a new --out")
    os.makedirs(args.out, exist_ok=True)
    with open(saved, "w") as f:
        json.dump(cfg, f, indent=1)
    records = Records(args.out, folder, cfg, argv, args.reuse_from)
    records.drop_other_runs()
    records.compute = args.stop_after != "finished"
    results = run(cfg, args.stop_after, records)
    print(report_markdown(results))
    return results


if __name__ == "__main__":
    main()

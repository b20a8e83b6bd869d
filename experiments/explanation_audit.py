"""Audit: are the teacher's explanations right, and does the RLT reward know? (docs/results.md, sections 3, 4 and 7)

    python experiments/explanation_audit.py --out .scratch/evidence                    # the main run (seconds)
    python experiments/evidence.py --setting kl-0 ... then
    python experiments/explanation_audit.py --out .scratch/evidence-kl-0                # a settings run

Reads a finished (or partial) ``experiments/evidence.py`` run folder: the explanations its teacher wrote for the
distillation problems (``explanations_*.json``), the held-out teacher samples before and after GRPO
(``heldout_*.json``) and, for scale, the generator's worked derivations of the same problems. Each explanation gets
four flags, read from its text alone:

- ``states_answer``: the reference's final answer appears in it as a number (``evidence.answer_shown``);
- ``has_equation``: it holds at least one checkable arithmetic equality (``2 * 6 = 12``; chains ``a = b = c`` count
  one equality per ``=``; a side must be integer arithmetic with + - * / and parentheses, and at least one side must
  compute something);
- ``steps_right``: it has an equation and every checkable equality in it is true;
- ``right_to_answer``: steps right and the answer stated: the closest this text-only check comes to "a correct
  derivation" (``3 - 2 = 1`` for ``3 - (5 - 2)`` has its steps right but does not reach the answer 0).

The check is a heuristic that reads only written-out arithmetic (a step in words, "adding 6 and 4 gives 12", is not
checked); on the generator's worked derivations it must find every step right, which the audit reports as its own
sanity row. Per set (each arm's 128 training explanations, each reward bin, the held-out samples) the share of each
flag with a 95% bootstrap CI; over all of the trained teacher's K x M explanations, how the reward and its terms
differ between explanations with right and with wrong steps (Spearman with p, and the mean difference with a CI).

Writes ``<out>/explanation_audit.json`` and a record (bench/record.py) published like the run's phase records
(``docs/results/evidence/`` for the main ``full``-profile run, ``docs/results/evidence-settings/<name>/`` for a
settings run; ``--records`` overrides).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from fractions import Fraction
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("experiments.explanation_audit")

# a run of arithmetic text; it must not start right after a letter, digit or ^ (so "2x3=6" or "10^3 = 1000" are not
# read as "3=6" / "3 = 1000")
_RUN = re.compile(r"(?<![A-Za-z0-9_^.\\])-?[0-9(][0-9()+\-*/ .=]*")
_TIMES = re.compile(r"\s*(?:\\times|\\cdot|×|·)\s*")
_LIST = re.compile(r"(?m)^[ \t]*(?:step[ \t]*)?\d+[.):][ \t]+", re.IGNORECASE)   # "1. 5 + 3 = 8", "Step 2: ..."


def _value(expr: str) -> Optional[Fraction]:
    """The exact value of an integer arithmetic expression (+ - * / and parentheses; a leading minus sign), or None
    when it is not one (rlt_core.grading's evaluator: an AST walk, never ``eval``)."""
    from rlt_core.grading import ExpressionError, evaluate_expression

    expr = expr.strip().rstrip(".").strip()
    if not re.search(r"\d", expr) or re.search(r"\d\s*\.\s*\d", expr):
        return None
    try:
        return evaluate_expression("0" + expr if expr.startswith("-") else expr)[0]
    except ExpressionError:
        return None


def check_steps(text: str) -> tuple[int, int]:
    """(checkable equalities, wrong ones) in a text: every ``=`` between two arithmetic sides, one side computing."""
    text = _LIST.sub("", _TIMES.sub(" * ", text))
    checked = wrong = 0
    for m in _RUN.finditer(text):
        sides = m.group(0).split("=")
        for left, right in zip(sides, sides[1:]):
            a, b = _value(left), _value(right)
            if a is None or b is None or not (re.search(r"\d\s*[-+*/]", left) or re.search(r"\d\s*[-+*/]", right)):
                continue
            checked += 1
            wrong += a != b
    return checked, wrong


def flags(explanation: str, answer: str) -> dict[str, float]:
    """The three flags of one explanation (module docstring)."""
    from experiments.evidence import states_answer

    checked, wrong = check_steps(explanation)
    shown, right = states_answer(explanation, answer), checked > 0 and wrong == 0
    return {"states_answer": float(shown), "has_equation": float(checked > 0), "steps_right": float(right),
            "right_to_answer": float(right and shown)}


FLAGS = ("states_answer", "has_equation", "steps_right", "right_to_answer")


def audit_set(texts: list[str], answers: list[str]) -> dict:
    """Each flag's share over a set of explanations, with its bootstrap CI (module docstring)."""
    from experiments.evidence import mean_ci

    per = [flags(t, a) for t, a in zip(texts, answers)]
    return {"n": len(per), **{f: mean_ci([p[f] for p in per]) for f in FLAGS}}


def reward_vs_steps(rows: list[dict], texts: list[str], answers: list[str]) -> dict:
    """Over explanations with an equation: the reward and its terms of those with right steps minus those with a
    wrong one (mean difference, bootstrap CI over explanations) and Spearman's rho of each term with steps_right."""
    import numpy as np
    from scipy import stats

    keep = [(r, flags(t, a)) for r, t, a in zip(rows, texts, answers)]
    keep = [(r, f) for r, f in keep if f["has_equation"]]
    right = np.array([f["steps_right"] for _, f in keep])
    out: dict = {"n": len(keep), "n_right": int(right.sum())}
    if len(keep) < 4 or right.min() == right.max():
        return out
    rng = np.random.default_rng(0)
    for term in ("reward", "r_ss", "r_kl"):
        x = np.array([r[term] for r, _ in keep])
        a, b = x[right == 1], x[right == 0]
        boot = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(4000)]
        rho, p = stats.spearmanr(x, right)
        out[term] = {"right_minus_wrong": float(a.mean() - b.mean()),
                     "ci95_bootstrap": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
                     "spearman": [float(rho), float(p)]}
    return out


def audit_run(out: str, cfg: dict) -> dict:
    """Every set of a run folder that exists (module docstring)."""
    from experiments import evidence as ev

    style = ev._style()
    _, heldout, distill = ev.problem_sets(cfg)

    def load(name: str) -> Optional[list[dict]]:
        path = os.path.join(out, f"{name}.json")
        return json.load(open(path))["rows"] if os.path.exists(path) else None

    def of(rows: list[dict], problems: list[dict]) -> tuple[list[str], list[str]]:
        return [ev._explanation(r["text"], style) for r in rows], [problems[r["problem"]]["answer"] for r in rows]

    sets: dict[str, dict] = {}
    if distill[0].get("worked_solution") is not None:
        sets["worked_thought"] = audit_set([p["worked_solution"] for p in distill], [p["answer"] for p in distill])
    untrained, trained = load("explanations_untrained"), load("explanations_trained")
    if untrained:
        sets["untrained"] = audit_set(*of(untrained, distill))
    result: dict = {"sets": sets}
    if trained:
        for arm in ev.TEACHER_PICKS:
            sets[arm] = audit_set(*of(ev.teacher_arm_samples(trained, arm, cfg["seed"]), distill))
        if cfg.get("reward_bins"):
            bins = ev.reward_bins(trained, cfg["reward_bins"])
            result["bins"] = [{"mean_reward": sum(r["reward"] for r in b) / len(b), **audit_set(*of(b, distill))}
                              for b in bins]
        result["reward_vs_steps"] = reward_vs_steps(trained, *of(trained, distill))
    for phase in ("heldout_before", "heldout_after"):
        rows = load(phase)
        if rows:
            sets[phase] = audit_set(*of(rows, heldout))
    return result


def main(argv: Optional[list[str]] = None) -> dict:
    from experiments import evidence as ev

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_run_folder_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg, records = ev.run_folder_records(args.out, args.records, argv)
    session = records.start("explanation_audit")
    result = audit_run(args.out, cfg)
    if not result["sets"]:
        p.error(f"--out {args.out}: no explanations yet (the run has not reached its teacher phases)")
    for name, s in result["sets"].items():
        log.info("%-20s n=%3d  states answer %5.1f%%  has equation %5.1f%%  steps right %5.1f%%  right to the answer "
                 "%5.1f%%", name, s["n"], *(100 * s[f]["mean"] for f in FLAGS))
    with open(os.path.join(args.out, "explanation_audit.json"), "w") as f:
        json.dump(result, f, indent=1)
    records.write(session, result)
    return result


if __name__ == "__main__":
    main()

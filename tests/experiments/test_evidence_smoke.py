"""Smoke run of experiments/evidence.py (tiny random models): every phase runs, results hold, a rerun resumes."""
from __future__ import annotations

import json
import logging
import math
import os
import time

import pytest

from experiments import evidence


def test_mean_ci_brackets_the_mean_and_excludes_zero_for_a_clear_shift():
    r = evidence.mean_ci([1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.3, 1.05])
    assert r["ci95_bootstrap"][0] < r["mean"] < r["ci95_bootstrap"][1]
    assert r["ci95_t"][0] > 0 and r["n"] == 8
    noisy = evidence.mean_ci([1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    assert noisy["ci95_bootstrap"][0] < 0 < noisy["ci95_bootstrap"][1]


def test_paired_reward_change_is_per_problem_after_minus_before():
    before = [{"problem": p, "sample": s, "text": "same" if p == 0 else f"t{s}", "reward": float(p) + 0.1 * s, "r_ss": 0.0, "r_kl": 0.0, "has_format_penalty": 1.0,
               "n_explanation_tokens": 10.0} for p in range(4) for s in range(2)]
    after = [dict(r, reward=r["reward"] + 0.5, has_format_penalty=0.0) for r in before]
    change = evidence.paired_reward_change(before, after)
    assert change["reward"]["difference"]["mean"] == pytest.approx(0.5)
    assert change["reward"]["difference"]["ci95_bootstrap"] == pytest.approx([0.5, 0.5])
    assert change["has_format_penalty"]["difference"]["mean"] == pytest.approx(-1.0)
    # problem 0 has one distinct completion twice, the others two: (1 + 2 + 2 + 2) / 4
    assert change["diversity"]["before"]["distinct_per_problem"] == pytest.approx(1.75)
    assert change["diversity"]["before"]["within_problem_reward_std"] == pytest.approx(0.05)


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        evidence.main(["--profile", "smoke", "--out", str(tmp_path), "--set", "nope=1"])


@pytest.mark.slow
def test_smoke_profile_runs_every_phase_and_resumes(tmp_path, caplog):
    out = str(tmp_path / "ev")
    teacher = evidence.main(["--profile", "smoke", "--out", out, "--stop-after", "teacher"])
    assert "students" not in teacher and not os.path.exists(os.path.join(out, "students"))
    d = teacher["heldout_reward"]["diversity"]["before"]
    assert d["samples_per_problem"] == 2 and 1 <= d["distinct_per_problem"] <= 2
    results = evidence.main(["--profile", "smoke", "--out", out])  # continues with the student side
    assert json.dumps(results["grpo"], sort_keys=True) == json.dumps(teacher["grpo"], sort_keys=True)  # NaN-safe
    assert results["grpo"]["steps"] == 2
    for key in ("reward", "r_ss", "r_kl", "has_format_penalty"):
        assert math.isfinite(results["heldout_reward"][key]["difference"]["mean"])
    assert set(results["students"]) == {"reference", "untrained", "trained", "trained_best_of_k", "quartile_1",
                                        "quartile_2", "quartile_3", "quartile_4"}
    for s in results["students"].values():
        assert 0.0 <= s["accuracy"]["mean"] <= 1.0 and s["accuracy"]["n"] == 8
    q = results["quartiles"]["mean_reward"]
    assert q == sorted(q)  # bins are ordered by reward
    for name in ("results.json", "report.md", "reward_terms.png", "students.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "heldout_before.json")) as f:
        before = json.load(f)["rows"]
    with open(os.path.join(out, "heldout_after.json")) as f:
        after = json.load(f)["rows"]
    assert [r["seed"] for r in before] == [r["seed"] for r in after]  # the same seeds before and after
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger=evidence.log.name):
        again = evidence.main(["--profile", "smoke", "--out", out])  # every phase is on disk: nothing reruns
    started = [r.getMessage() for r in caplog.records if r.getMessage().endswith(": start")]
    assert not started and any("done earlier" in r.getMessage() for r in caplog.records), started
    assert time.perf_counter() - t0 < 300   # a safety net only: the phases' log above says what reran
    assert json.dumps(again["students"], sort_keys=True) == json.dumps(results["students"], sort_keys=True)
    with pytest.raises(SystemExit):  # another configuration never mixes into a finished run's folder
        evidence.main(["--profile", "smoke", "--out", out, "--set", "grpo_steps=3"])
    from experiments import thought_probe  # the empty-thought probe reads the same run folder
    thought_probe.main(["--out", out])
    with open(os.path.join(out, "thought_probe.json")) as f:
        probe = json.load(f)
    assert set(probe) == set(results["students"])
    for p in probe.values():
        assert p["n"] == 8 and 0.0 <= p["p_empty_thought"] <= 1.0 and p["greedy_empty_thought"] in {
            k / 8 for k in range(9)}

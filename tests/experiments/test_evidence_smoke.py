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


def test_answer_shown_flags_explanations_that_state_the_answer():
    problems = [{"answer": "10"}, {"answer": "-3"}]
    texts = ["1 + 3 + 6 = 10\n\n<|end_of_explanation|>",                     # states it
             "1 + 3 + 6 = 100\n\n<|end_of_explanation|>",                    # 100 is not 10
             "So the answer is \\boxed{10}.\n\n<|end_of_explanation|>",     # copies the reference's form
             "2 - 5 = -3\n\n<|end_of_explanation|>",
             "1 - 11 = -10\n\n<|end_of_explanation|>"]                      # -10 is not 10
    rows = [{"problem": p, "text": t} for p, t in zip([0, 0, 0, 1, 0], texts)]
    flagged = evidence.answer_shown(rows, problems, evidence._style())
    assert [r["answer_in_explanation"] for r in flagged] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert [r["boxed_in_explanation"] for r in flagged] == [0.0, 0.0, 1.0, 0.0, 0.0]
    change = evidence.paired_reward_change(
        [dict(r, reward=0.0, r_ss=0.0, r_kl=0.0, has_format_penalty=0.0, n_explanation_tokens=1.0, sample=0)
         for r in flagged], [dict(r, reward=0.0, r_ss=0.0, r_kl=0.0, has_format_penalty=0.0,
                                  n_explanation_tokens=1.0, sample=0) for r in flagged])
    assert change["answer_in_explanation"]["before"]["mean"] == pytest.approx((2 / 4 + 1) / 2)


def test_seeds_items_ci_covers_the_spread_between_training_seeds():
    same = evidence.seeds_items_ci([[1, 0, 1, 0]] * 3)
    assert same["mean"] == 0.5 and same["seeds"] == 3 and same["n"] == 4 and same["per_seed"] == [0.5] * 3
    # the same item means, but the seeds disagree: the CI over seeds and items is wider than over items alone
    spread = evidence.seeds_items_ci([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    items_only = evidence.mean_ci([2 / 3, 1 / 3, 2 / 3, 1 / 3])   # each item's mean over the seeds
    width = spread["ci95_bootstrap"][1] - spread["ci95_bootstrap"][0]
    assert width > 0.5 > items_only["ci95_bootstrap"][1] - items_only["ci95_bootstrap"][0]
    with pytest.raises(ValueError, match="seeds x items"):
        evidence.seeds_items_ci([])


def test_arm_stats_pairs_seed_with_seed_and_item_with_item():
    def run(correct, sampled):
        return {"correct": correct, "sampled_correct": sampled, "samples_per_item": 2, "truncated": 1, "rows": 8,
                "final_loss": 1.0, "train_tokens_in": 100, "train_tokens_out": 10, "mean_completion_tokens": 5}

    runs = {"reference": [run([True, False, False, False], [2, 0, 0, 0]), run([False, False, True, False], [0, 0, 2, 0])],
            "trained": [run([True, True, False, False], [2, 1, 0, 0]), run([False, True, True, False], [1, 2, 2, 0])]}
    stats = evidence.arm_stats(runs, {"correct": [False] * 4})
    t = stats["trained"]
    assert t["accuracy"]["mean"] == 0.5 and t["vs_reference"]["mean"] == 0.25 and t["vs_base"]["mean"] == 0.5
    # seed i against seed i, item against item: each seed gains item 1 and loses nothing (crossed pairs would give
    # seed 0 a loss on item 2), so every resample's difference is >= 0
    assert t["vs_reference"]["per_seed"] == [0.25, 0.25] and t["vs_reference"]["ci95_bootstrap"][0] >= 0.0
    assert t["avg_at_k"]["mean"] == pytest.approx(8 / 16) and t["pass_at_k"]["mean"] == pytest.approx(5 / 8)
    assert t["avg_at_k_vs_reference"]["mean"] == pytest.approx((8 - 4) / 16)
    assert "vs_reference" not in stats["reference"] and t["k"] == 2 and t["train_tokens_in"] == 100


def test_selection_pairs_the_reward_picks_seed_with_seed():
    def run(correct):
        return {"correct": correct, "sampled_correct": [2 * c for c in correct], "samples_per_item": 2,
                "truncated": 0, "rows": 4, "train_tokens_in": 10}

    base = {"correct": [False] * 4}
    best = [run([True, True, True, False]), run([True, True, False, False])]
    worst = [run([True, False, False, False]), run([False, True, False, False])]
    assert evidence.selection_stats({"trained_best_of_k": best}, base) == {}   # no pair finished: nothing
    sel = evidence.selection_stats({"trained_best_of_k": best, "trained_worst_of_k": worst,
                                    "reference": [run([False] * 4)] * 2}, base)
    assert set(sel) == {"best_minus_worst"}   # only the finished pair; other arms play no part
    d = sel["best_minus_worst"]
    # seed 0: 3/4 - 1/4, seed 1: 2/4 - 1/4; no item where best is wrong and worst right, seed against seed
    assert d["greedy"]["per_seed"] == [0.5, 0.25] and d["greedy"]["ci95_bootstrap"][0] >= 0.0
    assert d["avg_at_k"]["mean"] == pytest.approx(d["greedy"]["mean"]) and d["greedy"]["seeds"] == 2
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import doc_templates

    text = doc_templates._selection_text(sel, {"best_of_k": 4, "eval_samples": 8})
    assert text.startswith("best minus worst of 4: greedy +37.5 [") and "avg@8 +37.5" in text and ";" not in text


def test_reward_bins_are_equal_sized_and_ordered():
    rows = [{"reward": r} for r in (5, 1, 4, 2, 3, 0, 9)]
    bins = evidence.reward_bins(rows, 3)
    assert [[r["reward"] for r in b] for b in bins] == [[0, 1], [2, 3], [4, 5]]   # the top row (9) is left out
    with pytest.raises(ValueError, match="reward bins"):
        evidence.reward_bins(rows[:2], 3)


def test_the_kl_weights_reach_the_reward():
    cfg = dict(evidence.PROFILES["smoke"], kl_coef=[1.0, 0.01])
    assert evidence._reward_config(cfg, 4, evidence._style()).kl_coef == (1.0, 0.01)
    assert evidence._reward_config(evidence.PROFILES["full"], 4, evidence._style()).kl_coef == (3.0, 0.03)


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        evidence.main(["--profile", "smoke", "--out", str(tmp_path), "--set", "nope=1"])


def test_restore_takes_one_run_of_the_same_configuration(tmp_path):
    cfg = dict(evidence.PROFILES["smoke"], out=str(tmp_path / "old"), seed=0, profile="smoke")
    published = tmp_path / "published"
    published.mkdir()

    def record(name: str, run_id: str, **config) -> None:
        rec = {"bench": "evidence", "variant": name, "run_id": run_id, "config": {**cfg, **config},
               "numbers": {"seconds": 1.0, "rows": [name]}}
        (published / f"{name}.json").write_text(json.dumps(rec))

    out = str(tmp_path / "new")
    assert evidence.restore_run_folder(str(published), out, cfg) == 0   # no records: a new run
    record("teacher_sft", "run-a")
    record("grpo", "run-a")
    (published / "summary.json").write_text(json.dumps({"bench": "evidence", "run_id": "run-a", "numbers": {}}))
    assert evidence.restore_run_folder(str(published), out, {**cfg, "out": out}) == 2   # the summary is no phase
    with open(os.path.join(out, "grpo.json")) as f:
        assert json.load(f) == {"seconds": 1.0, "rows": ["grpo"]}
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["run_id"] == "run-a"
    assert evidence.restore_run_folder(str(published), out, cfg) == 0   # phases already there are kept
    # a phase reused from another run (a settings run's reference students) keeps that run's configuration: only
    # the teacher-free settings must match
    record("student_reference_s0", "run-a", kl_coef=[0.0, 0.0])
    rec = json.loads((published / "student_reference_s0.json").read_text())
    (published / "student_reference_s0.json").write_text(json.dumps({**rec, "reused_from": {"out": "main"}}))
    assert evidence.restore_run_folder(str(published), out, cfg) == 1
    (published / "student_reference_s0.json").write_text(json.dumps({**rec, "reused_from": {"out": "main"},
                                                                      "config": {**rec["config"], "distill_steps": 9}}))
    with pytest.raises(SystemExit, match=r"\['distill_steps'\] differ"):
        evidence.restore_run_folder(str(published), str(tmp_path / "other"), cfg)
    (published / "student_reference_s0.json").unlink()
    record("heldout_before", "run-a", grpo_steps=7)
    with pytest.raises(SystemExit, match=r"\['grpo_steps'\] differ"):
        evidence.restore_run_folder(str(published), str(tmp_path / "other"), cfg)
    record("heldout_before", "run-b")
    with pytest.raises(SystemExit, match="mixes the records of runs"):
        evidence.restore_run_folder(str(published), str(tmp_path / "other"), cfg)


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
    assert set(results["students"]) == set(evidence.PROFILES["smoke"]["arms"]) == {*evidence.ARMS, "worked_thought"}
    for name, s in results["students"].items():
        # 2 training seeds x 8 items; greedy and sampled (2 samples per item) figures, paired to both references
        assert 0.0 <= s["accuracy"]["mean"] <= 1.0 and s["accuracy"]["n"] == 8 and s["accuracy"]["seeds"] == 2
        assert 0.0 <= s["avg_at_k"]["mean"] <= s["pass_at_k"]["mean"] <= 1.0 and s["k"] == 2
        assert ("vs_reference" in s) == (name != "reference") and s["rows"] == 8
    assert {"avg_at_k", "pass_at_k", "accuracy"} <= set(results["base_student"])
    bins = results["bins"]
    assert bins["n_bins"] == 4 and bins["rows_per_bin"] == 8   # 8 problems x best_of_k 4 = 32 rows
    assert bins["mean_reward"] == sorted(bins["mean_reward"])  # bins are ordered by reward
    top, bottom = (json.load(open(os.path.join(out, f"student_bin_{i}of4.json")))["accuracy"]["mean"] for i in (4, 1))
    assert bins["top_minus_bottom"]["mean"] == pytest.approx(top - bottom) and bins["top_minus_bottom"]["n"] == 8
    assert -1.0 <= bins["upper_minus_lower_half"]["mean"] <= 1.0 and bins["upper_minus_lower_half"]["n"] == 8
    seeds = {json.load(open(os.path.join(out, f"student_trained_s{i}.json")))["seed"] for i in range(2)}
    assert seeds == {0, 1}, "each seed of an arm is its own training run"
    # the explanation audit reads the run's records (smoke: published in the run folder, never in docs/)
    from experiments import explanation_audit

    audit = explanation_audit.main(["--out", out])
    assert {"worked_thought", "untrained", *evidence.TEACHER_PICKS, "heldout_before", "heldout_after"} == set(
        audit["sets"])
    assert audit["sets"]["worked_thought"]["right_to_answer"]["mean"] == 1.0   # the generator's steps are right
    assert audit["sets"]["trained"]["n"] == 8 and len(audit["bins"]) == 4
    assert os.path.exists(os.path.join(out, "records", "explanation_audit.json"))
    _render_from_the_records(out, tmp_path)
    # question 3: the reward's student can be the reference-distilled student (trained first, reused by claim 2)
    out2 = str(tmp_path / "ev-reference-student")
    evidence.main(["--profile", "smoke", "--out", out2, "--stop-after", "teacher", "--set", 'reward_student="reference"'])
    with open(os.path.join(out2, "student_reference_s0.json")) as f:
        assert json.load(f)["name"] == "reference_s0"
    with open(os.path.join(out, "heldout_before.json")) as f, open(os.path.join(out2, "heldout_before.json")) as g:
        by_base, by_ref = json.load(f)["rows"], json.load(g)["rows"]
    assert [r["text"] for r in by_base] == [r["text"] for r in by_ref], "the same teacher and seeds"
    assert [r["r_ss"] for r in by_base] != [r["r_ss"] for r in by_ref], "another student scored them"
    # on a terse task the worked-derivation student can score instead (reused from the main run: teacher-free)
    out3 = str(tmp_path / "ev-worked-student")
    evidence.main(["--profile", "smoke", "--setting", "reward-student-worked", "--out", out3, "--reuse-from", out,
                   "--stop-after", "teacher"])
    with open(os.path.join(out3, "heldout_before.json")) as f:
        by_worked = json.load(f)["rows"]
    with open(os.path.join(out3, "records", "student_worked_thought_s0.json")) as f:
        assert json.load(f)["reused_from"]["out"] == out
    assert [r["text"] for r in by_worked] == [r["text"] for r in by_base]
    assert [r["r_ss"] for r in by_worked] not in ([r["r_ss"] for r in by_base], [r["r_ss"] for r in by_ref])
    # a GRPO phase cut after its last checkpoint resumes there, its per-step history kept
    with open(os.path.join(out2, "grpo.json")) as f:
        cut = json.load(f)
    os.remove(os.path.join(out2, "grpo.json"))
    with caplog.at_level(logging.INFO, logger=evidence.log.name):
        evidence.main(["--profile", "smoke", "--out", out2, "--stop-after", "teacher", "--set",
                       'reward_student="reference"'])
    assert any("grpo: resuming at step 2; 2 logged steps kept" in r.getMessage() for r in caplog.records)
    with open(os.path.join(out2, "grpo.json")) as f:
        resumed = json.load(f)
    assert resumed["steps"] == 2 and set(resumed["history"]) == set(cut["history"]) == {"1", "2"}
    caplog.clear()
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
    # --stop-after finished: a run still going (here: one seed of one arm missing) is summarized, nothing computed
    held = os.path.join(out, "student_trained_worst_of_k_s1.json")
    os.rename(held, held + ".held")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=evidence.log.name):
        partial = evidence.main(["--profile", "smoke", "--out", out, "--stop-after", "finished"])
    assert not [r.getMessage() for r in caplog.records if r.getMessage().endswith(": start")]
    os.rename(held + ".held", held)
    assert partial["pending_arms"] == ["trained_worst_of_k"]
    # picking by reward: the finished pair only while worst-of-K trains, all three pairs once it is done
    assert set(partial["selection"]) == {"best_minus_sample0", "best_minus_random"} and set(results["selection"]) == {
        "best_minus_sample0", "best_minus_random", "best_minus_worst", "random_minus_worst"}
    assert partial["selection"]["best_minus_random"] == results["selection"]["best_minus_random"]
    # the reward bins are trained before the random-/worst-of-K controls: finished, they are summarized already
    assert json.dumps(partial["bins"], sort_keys=True) == json.dumps(results["bins"], sort_keys=True)
    assert json.dumps(partial["students"], sort_keys=True) == json.dumps(
        {k: v for k, v in results["students"].items() if k != "trained_worst_of_k"}, sort_keys=True)
    with pytest.raises(evidence.PhaseNotFinished, match="phase teacher_sft is not finished"):
        evidence.main(["--profile", "smoke", "--out", str(tmp_path / "ev-empty"), "--stop-after", "finished"])
    with pytest.raises(SystemExit):  # another configuration never mixes into a finished run's folder
        evidence.main(["--profile", "smoke", "--out", out, "--set", "grpo_steps=3"])
    from experiments import thought_probe  # the empty-thought probe reads the same run folder
    thought_probe.main(["--out", out])
    with open(os.path.join(out, "thought_probe.json")) as f:
        probe = json.load(f)
    assert set(probe) == set(os.listdir(os.path.join(out, "students")))
    assert {f"{arm}_s{i}" for arm in evidence.PROFILES["smoke"]["arms"] for i in range(2)} <= set(probe)
    for p in probe.values():
        assert p["n"] == 8 and 0.0 <= p["p_empty_thought"] <= 1.0 and p["greedy_empty_thought"] in {
            k / 8 for k in range(9)}
    _settings_run_reuses_the_teacher_free_phases(out, tmp_path, caplog)
    _a_lost_run_folder_continues_from_its_records(out, results, tmp_path, caplog)


def _settings_run_reuses_the_teacher_free_phases(main_out: str, tmp_path, caplog) -> None:
    """A KL-weight run (question 5) with --reuse-from takes the base student and the reference students from the
    main run (linked, records marked) and trains only what its setting changes; no bins with reward_bins 0; the
    settings table renders from its records beside the main run's."""
    import shutil
    import sys
    from pathlib import Path

    out = str(tmp_path / "ev-kl")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=evidence.log.name):
        res = evidence.main(["--profile", "smoke", "--setting", "kl-1", "--out", out, "--reuse-from", main_out])
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["kl_coef"] == [1.0, 0.01] and cfg["reward_bins"] == 0 and cfg["setting"] == "kl-1"
    reused = {r.getMessage().split()[1].rstrip(":") for r in caplog.records if "reused from" in r.getMessage()}
    assert reused == {"base_student", "student_reference_s0", "student_reference_s1"}
    started = {r.getMessage().split()[1].rstrip(":") for r in caplog.records if r.getMessage().endswith(": start")}
    assert {"student_trained_s0", "student_trained_best_of_k_s1", "grpo"} <= started and not started & reused
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import doc_templates

    root = tmp_path / "repo-settings"
    shutil.copytree(os.path.join(out, "records"), root / "docs" / "results" / "evidence-settings" / "kl-1")
    shutil.copytree(os.path.join(main_out, "records"), root / "docs" / "results" / "evidence")
    block = doc_templates.evidence_settings(doc_templates.Ctx(root, "docs/results.md"))
    assert "| kl-1 |" in block and "| paper (main run) |" in block and "kl-0: not yet measured" in block, block
    assert set(res["students"]) == {"reference", "trained", "trained_best_of_k"} and "bins" not in res
    # a settings run picks best-of-K against sample 0 (its only other teacher pick), in its note; the main run's
    # picks are section 3's, not repeated here
    assert set(res["selection"]) == {"best_minus_sample0"}
    assert block.count("Picking by reward") == 1 and "best of 4 minus sample 0: greedy" in block
    with open(os.path.join(main_out, "student_reference_s1.json")) as f, \
            open(os.path.join(out, "student_reference_s1.json")) as g:
        assert json.load(f)["correct"] == json.load(g)["correct"]
    with open(os.path.join(out, "records", "base_student.json")) as f:
        rec = json.load(f)
    with open(os.path.join(out, "run.json")) as f:
        assert rec["run_id"] == json.load(f)["run_id"] and rec["reused_from"]["out"] == main_out
    assert os.path.islink(os.path.join(out, "students", "reference_s0"))
    with pytest.raises(ValueError, match="distill_steps"):   # another budget: not the same students
        evidence.main(["--profile", "smoke", "--out", str(tmp_path / "ev-other"), "--reuse-from", main_out,
                       "--set", "distill_steps=3", "--set", "reward_bins=0", "--set", 'arms=["reference"]'])


def _a_lost_run_folder_continues_from_its_records(out: str, results: dict, tmp_path, caplog) -> None:
    """--restore: a run whose folder is gone (a fresh checkout: models and all) continues from its published records
    alone: the finished phases are taken as they were (no model is loaded for them), the missing ones computed."""
    import shutil

    published = str(tmp_path / "published")
    shutil.copytree(os.path.join(out, "records"), published)
    os.remove(os.path.join(published, "student_trained_worst_of_k_s1.json"))   # the phase the run was in
    with open(os.path.join(out, "run.json")) as f:
        run_id = json.load(f)["run_id"]
    os.rename(out, out + ".gone")   # the run folder is lost: its models with it
    try:
        _restore(published, run_id, results, tmp_path, caplog)
    finally:
        os.rename(out + ".gone", out)


def _restore(published: str, run_id: str, results: dict, tmp_path, caplog) -> None:
    fresh = str(tmp_path / "ev-restored")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=evidence.log.name):
        again = evidence.main(["--profile", "smoke", "--out", fresh, "--records", published, "--restore"])
    started = {r.getMessage().split()[1].rstrip(":") for r in caplog.records if r.getMessage().endswith(": start")}
    assert started == {"student_trained_worst_of_k_s1"}, started   # only it: the teachers were never needed
    assert not os.path.exists(os.path.join(fresh, "grpo")) and not os.path.exists(os.path.join(fresh, "teacher_sft"))
    with open(os.path.join(published, "student_trained_worst_of_k_s1.json")) as f:
        assert json.load(f)["run_id"] == run_id, "the restored run publishes under the run's own id"
    for arm in ("reference", "trained", "trained_best_of_k"):
        assert json.dumps(again["students"][arm], sort_keys=True) == json.dumps(results["students"][arm], sort_keys=True)
    assert json.dumps(again["bins"], sort_keys=True) == json.dumps(results["bins"], sort_keys=True)
    from experiments import thought_probe  # probes the students whose models are here, names the others
    thought_probe.main(["--out", fresh, "--records", published])
    with open(os.path.join(published, "thought_probe.json")) as f:
        probe = json.load(f)["numbers"]
    assert set(probe["students"]) == {"trained_worst_of_k_s1"}
    assert {"reference_s0", "trained_s1", "bin_1of4"} <= set(probe["missing"]) and len(probe["missing"]) == 8 * 2 + 4 - 1
    # a missing phase that needs a model the records do not hold stops with the reason, naming the phase
    os.remove(os.path.join(published, "heldout_after.json"))
    with pytest.raises(FileNotFoundError, match="phase grpo finished but its model"):
        evidence.main(["--profile", "smoke", "--out", str(tmp_path / "ev-restored-2"), "--records", published,
                       "--restore"])
    with pytest.raises(SystemExit):   # records of another configuration are refused
        evidence.main(["--profile", "smoke", "--out", str(tmp_path / "ev-restored-3"), "--records", published,
                       "--restore", "--set", "grpo_steps=3"])


def _render_from_the_records(out: str, tmp_path) -> None:
    """docs/results.md's evidence blocks render from this run's records (as they will from the committed ones):
    every arm's row, every bin, each record linked, nothing left 'Not yet measured'."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import doc_templates

    root = tmp_path / "repo"
    shutil.copytree(os.path.join(out, "records"), root / "docs" / "results" / "evidence")
    ctx = doc_templates.Ctx(root, "docs/results.md")
    students, bins = doc_templates.evidence_students(ctx), doc_templates.evidence_bins(ctx)
    for text in (students, bins, doc_templates.evidence_heldout(ctx), doc_templates.evidence_walltimes(ctx)):
        assert "Not yet measured" not in text and "Record: [`summary.json`]" in text, text
    for _, label in doc_templates.STUDENTS:
        assert label.format(k=4) in students
    assert "student_reference_thought_s1.json" in students and "student_bin_4of4.json" in bins
    assert students.count("Picking by reward") == 1 and "random minus worst of 4: greedy " in students
    assert len([line for line in bins.splitlines() if line.startswith("| ") and line[2].isdigit()]) == 4
    assert "explanations with right steps and the answer" in bins and "explanation_audit.json" in bins
    audit = doc_templates.evidence_explanation_audit(ctx)
    assert "Not yet measured" not in audit and "worked derivations" in audit and "held-out samples after" in audit


"""The reference baseline student (`evaluate.baselines: [reference]`) in a real tiny factory night: distilled on the
reference solutions with the night's distill recipe, evaluated on the same items; the report shows the paired gain
and the audit `min_gain_over_baseline` gates publishing on it (flows/releases/baseline.py)."""
from __future__ import annotations

import os

import pytest

from flows.recipe import Recipe
from flows.releases.audit import AuditFailed
from flows.releases.baseline import gains_over_baseline, item_scores
from infra.catalog.lake import Catalog
from infra.catalog.store import Store
from rlt_core.eval_metrics import paired_difference
from tests.flows.test_factory import tiny_recipe


def _recipe(model_dir: str, bound: float) -> dict:
    r = tiny_recipe(model_dir, train_teacher={"phases": []})
    r["evaluate"]["baselines"] = ["reference"]
    r["audits"] = {"min_gain_over_baseline": bound}
    return Recipe.model_validate(r).model_dump(mode="json")


@pytest.mark.slow
def test_baseline_student_gain_in_the_report_and_the_audit(tmp_path, tiny_model_dir):
    from flows.factory import factory_flow

    root = str(tmp_path / "data")
    out = factory_flow(recipe=_recipe(tiny_model_dir, -1.0), root=root, tracking=False)   # any gain passes
    assert {"distill_set_reference", "student_checkpoint_reference", "eval_reference"} <= set(out)
    cat = Catalog(Store(root))
    problems = cat.count("problems", out["problems"]["key"])
    ref_rows = [r for b in cat.scan("distill_set", out["distill_set_reference"]["key"], ["origin", "explanation_id"])
                for r in b.to_pylist()]
    assert len(ref_rows) == problems and {r["origin"] for r in ref_rows} == {"reference"}
    assert all(r["explanation_id"] is None for r in ref_rows)
    # the gain, recomputed here from the two evaluations' committed rows, is the one the report and audit used
    gains = gains_over_baseline(cat, out["eval_distilled"]["key"], out["eval_reference"]["key"])
    assert set(gains) == {"countdown-heldout"} and gains["countdown-heldout"]["items"] == 3
    st = {k: cat.artifact(out[k]["key"]) for k in ("eval_distilled", "eval_reference")}
    import json

    ekeys = {k: json.loads(v["stats_json"])["benchmarks"]["countdown-heldout"]["eval_key"] for k, v in st.items()}
    direct = paired_difference(item_scores(cat, out["eval_distilled"]["key"], ekeys["eval_distilled"]),
                               item_scores(cat, out["eval_reference"]["key"], ekeys["eval_reference"]))
    assert gains["countdown-heldout"]["value"] == pytest.approx(direct["value"])
    run = cat.rows("SELECT audits_json FROM releases WHERE alias = 'current' ORDER BY ts DESC LIMIT 1")
    assert run and "min_gain_over_baseline[countdown-heldout]" in run[0]["audits_json"]
    page = open(os.path.join(out["report"]["uri"], "index.html")).read()
    assert "Gain of the distilled student over the reference baseline" in page
    assert "<td>reference</td><td>countdown-heldout</td>" in page   # the baseline's own evaluation row
    # `latest` (export) is the night's distill set, not the baseline's, though the baseline's was committed after it
    from flows.releases.export import resolve_release

    assert resolve_release(cat, "latest").record["key"] == out["distill_set"]["key"]
    # a bound no tiny student can reach: the same night (every stage cached) fails its audit, naming the gain
    with pytest.raises(AuditFailed, match=r"min_gain_over_baseline\[countdown-heldout\] .* vs bound 1"):
        factory_flow(recipe=_recipe(tiny_model_dir, 1.0), root=root, tracking=False)
    stages = cat.rows("SELECT stage, label, status FROM stage_runs WHERE run_id = (SELECT run_id FROM runs_latest "
                      "ORDER BY ts DESC LIMIT 1)")
    assert stages and all(s["status"] == "cached" for s in stages), stages
    cat.close()


@pytest.mark.slow
def test_baseline_student_as_the_reward_student_of_a_real_night(tmp_path, tiny_model_dir):
    """`train_teacher.reward_student: baseline`: filter[reference] and distill[reference] run before the teacher,
    whose GRPO reward and score's ledger read with that checkpoint; lineage and the dataset card name it."""
    import json

    from flows.factory import factory_flow
    from flows.releases.export import release_facts, resolve_release
    from infra.models import folder_digest

    root = str(tmp_path / "data")
    recipe = Recipe.model_validate(tiny_recipe(tiny_model_dir, train_teacher={"phases": ["grpo"],
                                                                             "reward_student": "baseline"}))
    assert recipe.score.reward_student == "baseline"   # score follows train_teacher
    out = factory_flow(recipe=recipe.model_dump(mode="json"), root=root, tracking=False)
    assert "eval_reference" not in out   # distilled for the reward only: not evaluated without `evaluate.baselines`
    cat = Catalog(Store(root))
    ran = [(r["stage"], r["label"]) for r in cat.rows(
        "SELECT stage, label FROM stage_runs WHERE run_id = ? AND status = 'done' ORDER BY ts", [out["run_id"]])]
    assert ran.index(("distill", "reference")) < ran.index(("train_teacher", "")) < ran.index(("score", ""))
    ref_ckpt = cat.artifact(out["student_checkpoint_reference"]["key"])
    assert ref_ckpt["digest"] != folder_digest(tiny_model_dir)   # distilled: not the base student
    teacher = cat.artifact(out["teacher_checkpoint"]["key"])
    assert json.loads(teacher["inputs_json"])["reward_student"] == ref_ckpt["key"]
    assert "student" not in json.loads(teacher["models_json"])
    trow = next(r for b in cat.scan("teacher_checkpoint", teacher["key"], ["student_key"]) for r in b.to_pylist())
    assert trow["student_key"] == f"artifact:{ref_ckpt['key']}"
    digests = {r["student_digest"] for b in cat.scan("scored_explanations", out["scored_explanations"]["key"],
                                                       ["student_digest"]) for r in b.to_pylist()}
    assert digests == {ref_ckpt["digest"]}   # every ledger row was scored by the baseline student
    parents = {r["parent_key"] for r in cat.rows("SELECT parent_key FROM lineage WHERE child_key = ?",
                                                  [teacher["key"]])}
    assert ref_ckpt["key"] in parents   # lineage: the teacher descends from the baseline student
    facts = release_facts(cat, resolve_release(cat, "latest"))
    for role in ("train_teacher.student", "score.student"):
        assert facts["students"][role]["key"] == ref_ckpt["key"], facts["students"]
    page = open(os.path.join(out["report"]["uri"], "index.html")).read()
    assert f"baseline {ref_ckpt['key'][:12]}" in page   # the report says which student the rewards read with
    cat.close()
    again = factory_flow(recipe=recipe.model_dump(mode="json"), root=root, tracking=False)   # plan and run agree
    assert again["teacher_checkpoint"]["key"] == teacher["key"]

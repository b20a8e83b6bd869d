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

"""Incremental nights at example level (infra/engine/reuse.py): a grown source reuses every row an earlier artifact holds
under the same teacher and config, computes only the new ones, and says where each reused row came from."""
from __future__ import annotations

import json

import pytest

from data_contracts import explanations as explanations_contract
from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from tasks import generate, ingest, score
from tests.tasks.helpers import base_teacher, commit_rows

GEN = dict(num_samples=2, sampling={"temperature": 0.7, "max_new_tokens": 12}, shard_size=2, batch_size=4)
EXCLUDE = ("reused_from", "artifact_key", "latency_s")


def _night(ctx, model, n: int, gen: dict = GEN, score_cfg: dict | None = None):
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": n}, heldout_fraction=0.0))
    teacher = base_teacher(ctx, model, probs["problems"])
    ex = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**gen), probs["problems"], teacher)
    sc = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=model, shard_size=4, **(score_cfg or {})), ex, teacher)
    return probs["problems"], teacher, ex, sc


def _stats(ctx, ref) -> dict:
    return json.loads(ctx.catalog.artifact(ref.key)["stats_json"])


def _rows(ctx, table: str, key: str) -> dict[str, dict]:
    rows = ctx.catalog.rows(f"SELECT * FROM lake.data.{table} WHERE artifact_key = ?", [key])
    return {r["explanation_id"]: r for r in rows}


def _same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in EXCLUDE} == {k: v for k, v in b.items() if k not in EXCLUDE}


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, tiny_model_dir):
    """One data root for the module (tests add nights to it; each looks only at its own artifacts)."""
    ctx = RunContext(str(tmp_path_factory.mktemp("reuse") / "root"), tracking=False)
    first = _night(ctx, tiny_model_dir, 6)
    second = _night(ctx, tiny_model_dir, 8)   # the builtin generator's first 6 problems again, plus 2 new ones
    return ctx, first, second


def test_grown_source_reuses_old_rows_and_computes_only_new_ones(two_nights, tmp_path, tiny_model_dir):
    ctx, (p1, t1, ex1, sc1), (p2, t2, ex2, sc2) = two_nights
    assert t1.key == t2.key, "a teacher with no training phase must not depend on the problems"
    assert p1.key != p2.key and ex1.key != ex2.key and sc1.key != sc2.key
    assert (ex1.num_rows, ex2.num_rows, sc2.num_rows) == (12, 16, 16)
    for first, second in ((ex1, ex2), (sc1, sc2)):
        st = _stats(ctx, second)
        assert (st["rows_reused"], st["rows_computed"]) == (12, 4), st
        assert st["reused_from"] == {first.key: 12}
        assert _stats(ctx, first)["rows_reused"] == 0

    # reused rows are exact copies of the rows the first night computed, and say so
    for table, old, new in (("explanations", ex1, ex2), ("scored_explanations", sc1, sc2)):
        a, b = _rows(ctx, table, old.key), _rows(ctx, table, new.key)
        assert set(a) < set(b)
        assert all(b[i]["reused_from"] == old.key and _same(a[i], b[i]) for i in a)
        assert all(b[i]["reused_from"] is None for i in set(b) - set(a))

    # lineage: one `reused` edge per donor, besides the input edges
    edges = ctx.catalog.rows("SELECT child_key, parent_key FROM lake.main.lineage WHERE role = 'reused' AND "
                             "list_contains(?, child_key)", [[ex2.key, sc2.key]])
    assert sorted((e["child_key"], e["parent_key"]) for e in edges) == sorted([(ex2.key, ex1.key),
                                                                              (sc2.key, sc1.key)])

    # the grown night holds the same explanation ids as a from-scratch night on the same source
    fresh = RunContext(str(tmp_path / "fresh"), tracking=False)
    _, _, ex_f, sc_f = _night(fresh, tiny_model_dir, 8)
    assert (ex_f.key, sc_f.key) == (ex2.key, sc2.key)
    assert set(_rows(fresh, "explanations", ex_f.key)) == set(_rows(ctx, "explanations", ex2.key))
    assert _stats(fresh, ex_f)["rows_reused"] == 0


def test_a_third_night_names_the_artifact_that_computed_each_row(two_nights, tiny_model_dir):
    ctx, (_, _, ex1, _), (_, _, ex2, _) = two_nights
    _, _, ex3, _ = _night(ctx, tiny_model_dir, 9)
    st = _stats(ctx, ex3)
    # rows first computed on night 1 were copied from night 2's artifact but keep naming night 1
    assert st["reused_from"] == {ex1.key: 12, ex2.key: 4} and st["rows_computed"] == 2


def test_changed_generation_or_reward_config_reuses_nothing(two_nights, tiny_model_dir):
    ctx = two_nights[0]
    _, _, ex, sc = _night(ctx, tiny_model_dir, 8, gen=dict(GEN, seed=7))
    assert _stats(ctx, ex)["rows_reused"] == 0 and _stats(ctx, sc)["rows_reused"] == 0
    _, _, ex, sc = _night(ctx, tiny_model_dir, 8, score_cfg={"reward": {"kl_coef": [0.5, 0.0]}})
    assert ex.key == two_nights[2][2].key, "generate did not change: the second night's artifact, as is"
    assert _stats(ctx, sc)["rows_reused"] == 0, "a new reward config must recompute every score"


def test_score_reuses_a_row_only_when_the_explanation_text_is_the_same(two_nights, tiny_model_dir):
    """An explanation id does not cover generate's dtype/backend: the same id can carry another text."""
    ctx, (_, teacher, ex1, sc1), _ = two_nights
    rows = sorted(_rows(ctx, "explanations", ex1.key).values(), key=lambda r: r["explanation_id"])
    for r in rows[:3]:
        r["completion"] += " (another text)"
    edited = commit_rows(ctx, "explanations", explanations_contract.CONTRACT,
                         [{k: v for k, v in r.items() if k != "artifact_key"} for r in rows], seed="edited")
    sc = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=tiny_model_dir, shard_size=4), edited, teacher)
    st = _stats(ctx, sc)
    assert (st["rows_reused"], st["rows_computed"]) == (9, 3), st
    scored = _rows(ctx, "scored_explanations", sc.key)
    assert all(scored[r["explanation_id"]]["reused_from"] is None for r in rows[:3])


def test_plan_counts_new_and_reused_rows_before_running(tmp_path, tiny_model_dir):
    from flows.plan import annotate, count_reuse, stage_keys
    from flows.recipe import Recipe

    src = tmp_path / "src.jsonl"
    items = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}"} for a in range(1, 4)
             for b in range(1, 5)]
    src.write_text("".join(json.dumps(r) + "\n" for r in items[:10]))
    recipe = Recipe.model_validate({
        "name": "inc", "ingest": {"source": {"uri": str(src)}, "heldout_fraction": 0.0},
        "train_teacher": {"base_model": tiny_model_dir, "student_model": tiny_model_dir, "phases": []},
        "generate": GEN, "score": {"student_model": tiny_model_dir, "shard_size": 4}})
    ctx = RunContext(str(tmp_path / "root"), tracking=False)

    def plan():
        return {p.node.id: p for p in count_reuse(ctx, annotate(ctx, stage_keys(recipe, ["score"])))}

    before = plan()
    assert before["generate"].reuse == {"rows": 20, "reused": 0, "new": 20, "donors": 0}
    assert before["generate"].reason.startswith("20 new of 20 (0 reused)")
    probs = run_stage(ingest.STAGE, ctx, recipe.ingest)["problems"]
    teacher = base_teacher(ctx, tiny_model_dir, probs)
    ex = run_stage(generate.STAGE, ctx, recipe.generate, probs, teacher)
    run_stage(score.STAGE, ctx, recipe.score, ex, teacher)

    src.write_text("".join(json.dumps(r) + "\n" for r in items))   # the source grew by 2 problems
    after = plan()
    assert after["ingest"].status == "run" and after["train_teacher"].status == "cached"
    for node in ("generate", "score"):
        assert after[node].reuse == {"rows": 24, "reused": 20, "new": 4, "donors": 1}, node
        assert after[node].reason.startswith("4 new of 24 (20 reused from 1 earlier artifact(s))")


@pytest.mark.services
def test_grown_source_reuses_rows_on_s3_with_a_postgres_catalog(seaweed_s3, postgres_server, monkeypatch,
                                                                tiny_model_dir):
    """The deployment shape: data on S3 (SeaweedFS), catalog in PostgreSQL; donors are found and copied there too."""
    import time

    from tests.infra.devstack.services_fixtures import new_catalog_database

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    ctx = RunContext(f"s3://{seaweed_s3['bucket']}/rlt-reuse-{time.time_ns()}", tracking=False,   # a catalog of its own
                     catalog_url=new_catalog_database(postgres_server, "rlt_reuse")["writer"])
    _, _, ex1, sc1 = _night(ctx, tiny_model_dir, 6)
    _, _, ex2, sc2 = _night(ctx, tiny_model_dir, 8)
    for first, second in ((ex1, ex2), (sc1, sc2)):
        st = _stats(ctx, second)
        assert (st["rows_reused"], st["rows_computed"], st["reused_from"]) == (12, 4, {first.key: 12}), st
    a, b = _rows(ctx, "scored_explanations", sc1.key), _rows(ctx, "scored_explanations", sc2.key)
    assert all(_same(a[i], b[i]) and b[i]["reused_from"] == sc1.key for i in a)

"""Write-audit-publish (issue 14 part 2): a night that passes its audits moves `current`; a failing audit fails the
flow run and leaves the release; promote/rollback by hand with who and why; compare-and-set; `rlt releases`,
`rlt export current`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pydantic import ValidationError

from flows.cli import main
from flows.recipe import AuditsConfig, Recipe
from flows.releases.aliases import AliasConflict, ReleaseError, history, move_alias, promote, rollback_target
from flows.releases.audit import AuditFailed, kept_rewards, ks_statistic, mean_shift, run_audits
from infra.catalog.lake import Catalog
from infra.catalog.store import Store
from tests.flows.test_factory import tiny_recipe

AUDITS = {"min_yield": 0.0, "max_quarantine_rate": 1.0, "max_reward_mean_shift": 100.0, "max_reward_ks": 1.0,
          "max_eval_regression": 1.0, "max_contaminated": 0}


def _with_audits(recipe: dict, **audits) -> dict:
    r = dict(recipe)
    r["audits"] = {**recipe.get("audits", {}), **audits}
    return Recipe.model_validate(r).model_dump(mode="json")


@pytest.fixture(scope="module")
def night(tmp_path_factory, tiny_model_dir):
    """One tiny full factory night with every audit declared (loose bounds): it publishes `current`."""
    from flows.factory import factory_flow

    root = str(tmp_path_factory.mktemp("releases") / "data")
    recipe = _with_audits(tiny_recipe(tiny_model_dir), **AUDITS)
    out = factory_flow(recipe=recipe, root=root, tracking=False)
    cat = Catalog(Store(root))
    yield {"root": root, "recipe": recipe, "out": out, "key": out["distill_set"]["key"], "catalog": cat}
    cat.close()


# -- pure figures ------------------------------------------------------------------------------------------
def test_ks_and_mean_shift_on_fixed_arrays():
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    assert ks_statistic([0.0, 0.0, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(0.5, size=70)
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        pass
    else:
        assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    assert mean_shift([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    assert mean_shift([-1.5], [1.5]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        ks_statistic([], [1.0])


def test_contamination_audit_counts_the_nights_contaminated_rows(monkeypatch):
    import flows.releases.audit as audit

    monkeypatch.setattr(audit, "_stats", lambda cat, key: {"rows_in": 10, "quarantine.contaminated": 2}
                        if key == "problems-key" else {})
    failed = run_audits(None, AuditsConfig(max_contaminated=0), "distill-key", "problems-key")
    assert [(r["name"], r["figure"], r["passed"]) for r in failed] == [("max_contaminated", 2, False)]
    assert run_audits(None, AuditsConfig(max_contaminated=2), "distill-key", "problems-key")[0]["passed"]
    clean = run_audits(None, AuditsConfig(max_contaminated=0), "distill-key", "other-key")
    assert clean[0]["passed"] is False and clean[0]["detail"] == "no ingest stats"


def test_rollback_target_walks_back():
    rows = [{"key": "B", "action": "publish"}, {"key": "A", "action": "publish"}]
    assert rollback_target(rows) == "A"
    # C published, rolled back to B, rolled back again: A (not C again)
    rows = [{"key": "B", "action": "rollback"}, {"key": "C", "action": "publish"}, {"key": "B", "action": "publish"},
            {"key": "A", "action": "publish"}]
    assert rollback_target(rows) == "A"
    assert rollback_target([{"key": "A", "action": "publish"}]) is None


def test_audits_are_not_stage_config(tiny_model_dir):
    from flows.plan import stage_keys

    base = Recipe.model_validate(tiny_recipe(tiny_model_dir))
    audited = Recipe.model_validate(_with_audits(tiny_recipe(tiny_model_dir), min_yield=0.9, publish=False))
    assert [p.key for p in stage_keys(base)] == [p.key for p in stage_keys(audited)]
    with pytest.raises(ValidationError, match="extra"):
        AuditsConfig.model_validate({"min_yeild": 0.5})
    with pytest.raises(ValidationError):
        AuditsConfig.model_validate({"min_yield": 1.5})


# -- the flow ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_first_night_publishes_current(night):
    cat, key = night["catalog"], night["key"]
    audits = night["out"]["audits"]
    assert audits["passed"] and audits["published"] is True and audits["baseline"] is None
    names = {r["name"] for r in audits["results"]}
    assert {"min_yield", "max_quarantine_rate", "max_reward_mean_shift", "max_reward_ks",
            "max_eval_regression"} <= names
    by = {r["name"]: r for r in audits["results"]}
    assert 0.0 <= by["min_yield"]["figure"] <= 1.0 and by["max_reward_ks"]["detail"] == "no baseline"
    cur = cat.rows("SELECT * FROM aliases_current WHERE alias = 'current'")
    assert len(cur) == 1 and cur[0]["key"] == key and cur[0]["action"] == "publish"
    assert cur[0]["run_id"] == night["out"]["run_id"] and cur[0]["previous_key"] is None and "@" in cur[0]["actor"]


@pytest.mark.slow
def test_failed_audit_fails_the_run_and_keeps_the_release(night, capsys, tmp_path):
    from flows.factory import factory_flow

    cat = night["catalog"]
    before = history(cat, "current")
    bad = _with_audits(night["recipe"], min_yield=0.99)   # the tiny night keeps 1 of 2 samples per problem
    state = factory_flow(recipe=bad, root=night["root"], tracking=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(AuditFailed, match="min_yield"):
        state.result()
    assert history(cat, "current") == before, "a failed audit leaves the release (and its history) in place"
    run = cat.rows("SELECT run_id, status, detail FROM runs_latest ORDER BY ts DESC LIMIT 1")[0]
    assert run["status"] == "failed" and "AuditFailed" in run["detail"] and "min_yield" in run["detail"]
    # the run's HTML report says so, with the figures
    report = cat.rows("SELECT uri FROM artifacts_committed WHERE name = 'report' AND run_id = ?", [run["run_id"]])
    page = open(os.path.join(report[0]["uri"], "index.html")).read()
    assert "Audit failed" in page and "min_yield" in page and "FAIL" in page
    # the CLI: exit 2, one line naming the failed audit and its figure
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    rc = main(["--data-root", night["root"], "factory", "--recipe", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("rlt: audit failed, 'current' not moved: min_yield"), err[-1:]
    assert history(cat, "current") == before


@pytest.mark.slow
def test_promote_rollback_conflict_export_and_listing(night, tmp_path, capsys):
    from flows.factory import STAGE_FLOWS

    root, cat, a = night["root"], night["catalog"], night["key"]
    variant = json.loads(json.dumps(night["recipe"]))
    variant["filter"]["rules"]["top_k"] = 2   # another distill set (only the filter stage reruns)
    b = STAGE_FLOWS["filter"](recipe=variant, root=root, tracking=False)["distill_set"]["key"]
    assert b != a

    # the reward figures against the release, on committed data
    res = {r["name"]: r for r in run_audits(cat, AuditsConfig(max_reward_mean_shift=0.0, max_reward_ks=1.0), b,
                                            baseline_key=a)}
    new, old = kept_rewards(cat, b), kept_rewards(cat, a)
    assert res["max_reward_mean_shift"]["figure"] == pytest.approx(abs(np.mean(new) - np.mean(old)))
    assert res["max_reward_ks"]["figure"] == pytest.approx(ks_statistic(new, old))
    assert res["max_reward_ks"]["passed"]

    # promote: refused without a reason (library and CLI), then recorded with who and why
    with pytest.raises(ReleaseError, match="reason"):
        promote(cat, b[:12], reason="  ")
    with pytest.raises(SystemExit):
        main(["--data-root", root, "promote", b[:12]])
    assert main(["--data-root", root, "promote", b[:12], "--reason", "wider filter"]) == 0
    cur = cat.rows("SELECT * FROM aliases_current WHERE alias = 'current'")[0]
    assert (cur["key"], cur["previous_key"], cur["action"], cur["reason"]) == (b, a, "promote", "wider filter")
    assert "@" in cur["actor"]
    assert main(["--data-root", root, "promote", night["out"]["problems"]["key"], "--reason", "x"]) == 2

    # compare-and-set: a mover that saw an older position is refused, nothing written
    n = len(history(cat))
    with pytest.raises(AliasConflict, match="moved meanwhile"):
        move_alias(cat, "current", a, "promote", expected=a, reason="stale")
    assert len(history(cat)) == n

    # rollback: back to a, recorded; refused without a reason
    with pytest.raises(SystemExit):
        main(["--data-root", root, "rollback"])
    assert main(["--data-root", root, "rollback", "--reason", "b regressed"]) == 0
    cur = cat.rows("SELECT * FROM aliases_current WHERE alias = 'current'")[0]
    assert (cur["key"], cur["previous_key"], cur["action"], cur["reason"]) == (a, b, "rollback", "b regressed")
    assert main(["--data-root", root, "rollback", "--alias", "nightly", "--reason", "x"]) == 2
    capsys.readouterr()

    # `rlt export current` resolves the alias
    out = str(tmp_path / "release")
    assert main(["--data-root", root, "export", "current", "--format", "jsonl", "--out", out]) == 0
    assert f"exported distill_set {a} ('current', matched as alias)" in capsys.readouterr().out
    card = open(os.path.join(out, "README.md")).read()   # the dataset card carries the publish's audit figures
    assert "## Audits" in card and "`current` publish by" in card and "min_yield" in card and "max_reward_ks" in card
    assert json.load(open(os.path.join(out, "rlt_export.json")))["facts"]["audit"]["available"] is True

    # `rlt releases --json`: the history, newest first, with the publish's audit figures
    assert main(["--data-root", root, "releases", "current", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in rows] == ["rollback", "promote", "publish"]
    pub = rows[-1]
    assert pub["key"] == a and {r["name"] for r in pub["audits"]["results"]} >= {"min_yield", "max_reward_ks"}
    assert all("figure" in r and "bound" in r and "passed" in r for r in pub["audits"]["results"])
    assert main(["--data-root", root, "releases"]) == 0
    table = capsys.readouterr().out
    assert "rollback" in table and "min_yield=" in table


@pytest.mark.slow
def test_publish_that_loses_the_race_audits_again(night, monkeypatch):
    """Two nights of one recipe finishing together both read the alias unset; the second's compare-and-set finds
    the first's publish: it audits again against the new release instead of failing the night."""
    from flows.recipe import AuditsConfig
    from flows.releases import aliases as releases
    from flows.releases import audit

    cat, key = night["catalog"], night["key"]
    releases.move_alias(cat, "race", key, "publish", expected=None, run_id="first-night")
    real, calls = releases.current, []

    def stale_once(catalog, alias=releases.DEFAULT_ALIAS):
        calls.append(alias)
        return None if len(calls) == 1 else real(catalog, alias)   # the first read predates the other's publish

    monkeypatch.setattr(releases, "current", stale_once)
    before = len(releases.history(cat, "race"))
    summary = audit.audit_and_publish(cat, AuditsConfig(publish_alias="race"), {"distill_set": key}, "second-night")
    assert summary["published"] == "unchanged" and len(calls) == 2
    assert len(releases.history(cat, "race")) == before   # nothing appended by the loser

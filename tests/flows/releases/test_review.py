"""Human spot-checks (issue 25 part 1): a night's stratified sample as MLflow traces in a review queue with the three
label schemas; verdicts set through MLflow's API as the Review page sets them; `rlt review status` / `pull` into the
catalog's `reviews`; `audits.human_review` holding the release until the pull; a rejection dropped by the next
night's filter as `human_rejected`."""
from __future__ import annotations

import json
import os
import time

import pytest
from pydantic import ValidationError

from flows.cli import main
from flows.recipe import AuditsConfig, Recipe
from flows.releases import review_sample
from flows.releases.audit import human_review_row, run_audits
from flows.releases.review_config import HumanReviewAudit
from rlt_core.filtering import FilterRules, decide_problem
from tasks.filter import FilterConfig
from tests.flows.releases.test_report_browser import _browser
from tests.flows.test_factory import tiny_recipe


# -- pure parts ------------------------------------------------------------------------------------------
def _rows(n_teacher: int = 20, n_ref: int = 3) -> list[dict]:
    rows = [dict(example_id=f"d_{i:04d}", problem_id=f"p_{i:04d}", explanation_id=f"e_{i:04d}", origin="teacher",
                 reward=-float(i), max_new_tokens=100, completion_tokens=95 if i % 7 == 0 else 40,
                 finish_reason="stop") for i in range(n_teacher)]
    rows += [dict(example_id=f"d_r{i:03d}", problem_id=f"p_r{i:03d}", explanation_id=None, origin="reference",
                  reward=None) for i in range(n_ref)]
    return rows


def test_sample_is_stratified_and_deterministic():
    rows = _rows()
    a = review_sample.draw(rows, 8, "key-a")
    assert [r["example_id"] for r in a] == [r["example_id"] for r in review_sample.draw(list(reversed(rows)), 8,
                                                                                         "key-a")]
    assert len(a) == 8 and len({r["example_id"] for r in a}) == 8
    assert [r["stratum"] for r in a][:7] == list(review_sample.STRATA)   # one of each stratum first
    q = review_sample.strata(rows, 0.9)
    assert {r["example_id"] for r in q["reward_q4"]} == {f"d_{i:04d}" for i in range(5)}   # the highest rewards
    assert all(r["origin"] == "reference" for r in q["reference_fallback"])
    assert {r["example_id"] for r in q["near_length_limit"]} == {"d_0000", "d_0007", "d_0014"}
    assert len(review_sample.draw(rows, 100, "key-a")) == len(rows)   # never more than the set
    assert [r["example_id"] for r in review_sample.draw(rows, 8, "key-b")] != [r["example_id"] for r in a]


def test_rejected_explanation_is_dropped_as_human_rejected():
    cands = [dict(explanation_id=f"e_{i}", sample_index=i, reward=-float(i), answer_logprob_mean=0.0,
                  answer_logprob_min=0.0, kl_mean=0.0, kl_max=0.0, format_penalty=0.0, n_explanation_tokens=5)
             for i in range(3)]
    got = {d.explanation_id: (d.kept, d.reason) for d in decide_problem("p_0", cands, FilterRules(),
                                                                         rejected={"e_0"})}
    assert got == {"e_0": (False, "human_rejected"), "e_1": (True, "best_of_k"), "e_2": (False, "not_top_k")}


def test_filter_key_unchanged_without_rejections():
    base = FilterConfig()
    assert FilterConfig(reject_reviewed=True).key_config() == base.key_config()
    assert FilterConfig(reject_reviewed=True).key_extra() == base.key_extra() == {}
    one, same = FilterConfig(rejected_ids=("e_2", "e_1")), FilterConfig(rejected_ids=("e_1", "e_2", "e_1"))
    assert one.key_extra() == same.key_extra() != FilterConfig(rejected_ids=("e_1",)).key_extra()


def test_recipe_needs_a_sample_for_a_gating_review_audit():
    with pytest.raises(ValidationError, match="needs a sample to review"):
        Recipe.model_validate({"name": "x", "audits": {"human_review": {"wait": "hold"}}})
    Recipe.model_validate({"name": "x", "audits": {"human_review": {"wait": "skip"}}})
    with pytest.raises(ValidationError):
        Recipe.model_validate({"name": "x", "review": {"sample": 0}})


class _Verdicts:
    """A stand-in catalog answering human_review_row's one query."""

    def __init__(self, verdicts):
        self.verdicts = verdicts

    def rows(self, sql, params=()):
        return [{"verdict": v} for v in self.verdicts]


@pytest.mark.parametrize("wait,verdicts,passed,pending", [
    ("hold", [None, None, "pass"], False, True),
    ("fail", [None, None, "pass"], False, False),
    ("skip", [None, None, "pass"], True, False),
    ("hold", ["pass", "fail", "declined"], True, False),    # 1 of 2 verdicts fail = 0.5 <= 0.5; declined not needed
    ("hold", ["fail", "fail", "pass"], False, False),       # 2/3 > 0.5: a failed audit
    ("hold", [], False, False),                              # nothing was logged: nothing to wait for
])
def test_human_review_audit(wait, verdicts, passed, pending):
    row = human_review_row(_Verdicts(verdicts), HumanReviewAudit(max_reject_rate=0.5, wait=wait), "dk")
    assert (row["passed"], bool(row.get("pending"))) == (passed, pending), row
    out = run_audits(_Verdicts(verdicts), AuditsConfig(human_review={"max_reject_rate": 0.5, "wait": wait}), "dk")
    assert [r["name"] for r in out] == ["human_review"]


def test_existing_catalog_gains_the_review_relations(tmp_path):
    """A catalog written before reviews existed gains `review_samples`, `reviews` and `release_holds` (and their
    views) when opened for writing, like every relation added later."""
    from tests.tasks.helpers import catalog_written_before

    added = ("review_samples", "reviews", "release_holds")
    new = catalog_written_before(str(tmp_path), added)
    for view in (*added, "reviews_latest", "release_holds_latest"):
        assert new.rows(f"SELECT count(*) AS n FROM {view}")[0]["n"] == 0
    from flows.releases.review import rejected_explanation_ids

    assert rejected_explanation_ids(new) == []
    new.close()


def test_mlflow_unreachable_never_fails_the_night(tmp_path, monkeypatch, caplog):
    from flows.releases import review
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    rows = [{**r, "question": "q", "solution": "s", "explanation": "e"} for r in _rows(4, 1)]
    monkeypatch.setattr(review_sample, "candidates", lambda catalog, key: rows)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cat = Catalog(Store(str(tmp_path)))
    recipe = Recipe.model_validate({"name": "x", "review": {"sample": 3}})
    user_pw = "http://rlt:s3cret-pw@127.0.0.1:9"   # nothing listens on port 9
    assert review.log_night_safely(cat, recipe, user_pw, "dk", "run-1") is None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("sample was not logged" in w for w in warned) and not any("s3cret-pw" in w for w in warned)
    assert cat.rows("SELECT count(*) AS n FROM review_samples")[0]["n"] == 0
    cat.close()


# -- a real MLflow server and real factory nights ------------------------------------------------------------
def _answer(uri: str, trace_id: str, queue_id: str, passed: bool, reason: str | None = None, comment: str = ""):
    """What a reviewer's clicks on MLflow's Review page write: feedback under each schema's name, then the item
    marked complete."""
    import mlflow
    from mlflow.entities import AssessmentSource
    from mlflow.tracing.client import TracingClient

    who = AssessmentSource(source_type="HUMAN", source_id="alice@example.org")
    mlflow.log_feedback(trace_id=trace_id, name="rlt_verdict", value=passed, source=who)
    if reason:
        mlflow.log_feedback(trace_id=trace_id, name="rlt_reason", value=reason, source=who)
    if comment:
        mlflow.log_feedback(trace_id=trace_id, name="rlt_comment", value=comment, source=who)
    TracingClient(uri)._set_review_queue_item_status(queue_id, item_id=trace_id, status="complete",
                                                    completed_by="alice@example.org")


def _answer_in_browser(uri: str, queue, trace_id: str, question: str, comment: str) -> None:
    """A reviewer on MLflow's Review page: open the night's queue, click the example, Fail, pick wrong_math, write a
    comment, Submit (Chromium driven by Playwright, as tests/flows/releases/test_report_browser.py does)."""
    import re

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{uri}/#/experiments/{queue.experiment_id}/review-queue?selectedQueueId={queue.queue_id}",
                      timeout=60_000)
            page.get_by_role("row").filter(has_text=question[:60]).first.click(timeout=60_000)
            page.get_by_role("button", name="Submit").wait_for(timeout=60_000)
            assert f"selectedItemId={trace_id}" in page.url   # the example we meant
            page.locator("xpath=//*[normalize-space(text())='rlt_comment']/following::textarea[1]").fill(comment)
            page.get_by_role("combobox", name=re.compile("rlt_reason")).click()
            page.get_by_role("option", name="wrong_math").click()
            page.get_by_text("Fail", exact=True).click()
            if os.environ.get("RLT_REVIEW_SCREENSHOT"):   # the README's picture: the answered item, before Submit
                page.screenshot(path=os.environ["RLT_REVIEW_SCREENSHOT"])
            page.get_by_role("button", name="Submit").click()
            page.get_by_text("1 of").first.wait_for(timeout=60_000)   # "1 of N reviewed"
        finally:
            b.close()


def _show(capsys, text: str) -> None:
    with capsys.disabled():   # visible with -s
        print(text)


def _cli(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.services
def test_review_night_hold_pull_publish_and_reject(mlflow_server, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from flows.factory import factory_flow
    from flows.releases import aliases
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store
    from infra.review_queue import COMMENT, REASON, VERDICT, ReviewQueues

    t0 = time.time()
    uri, root = mlflow_server.uri, str(tmp_path / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []})
    recipe["review"] = {"sample": 5}
    recipe["audits"] = {**recipe["audits"], "human_review": {"max_reject_rate": 0.5, "wait": "hold"}}
    out = factory_flow(recipe=Recipe.model_validate(recipe).model_dump(mode="json"), root=root, tracking=True)
    key = out["distill_set"]["key"]
    assert out["audits"]["pending"] and not out["audits"]["published"]
    cat = Catalog(Store(root))
    assert aliases.current(cat) is None and [h["key"] for h in aliases.holds(cat)] == [key]
    shown = _cli(capsys, "--data-root", root, "releases")
    assert "held for human review" in shown
    _show(capsys, shown)   # (README: "A reviewer's morning" shows these outputs)
    _show(capsys, f"night 1 in {time.time() - t0:.1f}s")

    # the sample: traces in one queue that asks the three questions, every reward term and id on each trace
    sample = cat.rows("SELECT * FROM review_samples WHERE distill_key = ? ORDER BY example_id", [key])
    assert 1 <= len(sample) <= 5 and len({s["queue_id"] for s in sample}) == 1
    queues = ReviewQueues(uri)
    queue = queues.queue(sample[0]["queue_id"])
    assert queue.name == f"rlt tiny-test {out['run_id']}"
    schemas = {queues.tracing._get_label_schema(i).name for i in queue.schema_ids}
    assert schemas == {VERDICT, REASON, COMMENT}
    assert {i.trace_id for i in queues.items(queue.queue_id)} == {s["trace_id"] for s in sample}
    trace = queues.tracing.get_trace(sample[0]["trace_id"])
    tags = trace.info.tags
    assert tags["rlt.example_id"] == sample[0]["example_id"] and tags["rlt.distill_set"] == key
    assert tags["rlt.run_id"] == out["run_id"] and tags["rlt.stratum"] == sample[0]["stratum"]
    root_span = trace.data.spans[0]
    assert set(root_span.inputs) == {"question", "solution"} and "explanation" in root_span.outputs
    teacher = [s for s in sample if s["origin"] == "teacher"]
    assert teacher, "the tiny night kept no teacher explanation to review"
    t_attrs = queues.tracing.get_trace(teacher[0]["trace_id"]).data.spans[0].attributes
    assert {"reward", "answer_logprob_mean", "answer_logprob_min", "kl_mean", "kl_max",
            "format_penalty"} <= set(t_attrs)

    st = json.loads(_cli(capsys, "--data-root", root, "review", "status", "latest", "--json"))
    assert (st["sampled"], st["reviewed"], st["rejected"]) == (len(sample), 0, 0)
    _show(capsys, _cli(capsys, "--data-root", root, "review", "status"))

    # a reviewer fails one teacher explanation (wrong_math) on the Review page and passes the rest
    rejected = teacher[0]
    reviewer = "alice@example.org"
    if _browser() is not None:
        question = cat.rows("SELECT question FROM data_distill_set WHERE example_id = ?", [rejected["example_id"]])
        _answer_in_browser(uri, queue, rejected["trace_id"], question[0]["question"], "the second step is wrong")
        reviewer = "default"   # the UI's user on a server without authentication
    elif os.environ.get("RLT_REQUIRE_BROWSER") == "1":
        pytest.fail("RLT_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    else:
        _answer(uri, rejected["trace_id"], rejected["queue_id"], False, "wrong_math", "the second step is wrong")
    for s in sample:
        if s["trace_id"] != rejected["trace_id"]:
            _answer(uri, s["trace_id"], s["queue_id"], True)
    st = json.loads(_cli(capsys, "--data-root", root, "review", "status", out["run_id"], "--json"))
    assert (st["reviewed"], st["rejected"], st["by_reason"]) == (len(sample), 1, {"wrong_math": 1})
    _show(capsys, _cli(capsys, "--data-root", root, "review", "status"))
    assert aliases.current(cat) is None   # nothing moves before the pull

    text = _cli(capsys, "--data-root", root, "review", "pull")
    assert f"{len(sample)} new or changed verdict(s)" in text and "published" in text
    _show(capsys, text + _cli(capsys, "--data-root", root, "releases"))
    reviews = cat.rows("SELECT * FROM reviews_latest ORDER BY verdict")
    assert len(reviews) == len(sample)
    bad = [r for r in reviews if r["verdict"] == "fail"]
    assert [(r["explanation_id"], r["reason"], r["comment"], r["reviewer"]) for r in bad] == [
        (rejected["explanation_id"], "wrong_math", "the second step is wrong", reviewer)]
    assert all(r["reviewed_at"] is not None and r["queue_id"] == queue.queue_id for r in reviews)
    assert aliases.current(cat)["key"] == key
    assert [h["state"] for h in aliases.holds(cat, None)] == ["published"]
    assert "0 new or changed" in _cli(capsys, "--data-root", root, "review", "pull")   # idempotent
    assert len(cat.rows("SELECT * FROM reviews")) == len(sample)
    _show(capsys, f"reviewed and published at {time.time() - t0:.1f}s")

    # the next night drops the rejected explanation: only filter and what follows it recompute
    recipe2 = {**recipe, "filter": {**recipe["filter"], "reject_reviewed": True}}
    out2 = factory_flow(recipe=Recipe.model_validate(recipe2).model_dump(mode="json"), root=root, tracking=True)
    assert out2["distill_set"]["key"] != key and out2["scored_explanations"]["key"] == out["scored_explanations"]["key"]
    dec = cat.rows("SELECT explanation_id, kept, reason FROM data_filter_decisions WHERE artifact_key = ? AND "
                   "reason = 'human_rejected'", [out2["filter_decisions"]["key"]])
    assert dec == [{"explanation_id": rejected["explanation_id"], "kept": False, "reason": "human_rejected"}]
    kept = cat.rows("SELECT count(*) AS n FROM data_distill_set WHERE artifact_key = ? AND explanation_id = ?",
                    [out2["distill_set"]["key"], rejected["explanation_id"]])
    assert kept[0]["n"] == 0
    cat.close()
    _show(capsys, f"night 2 done at {time.time() - t0:.1f}s")

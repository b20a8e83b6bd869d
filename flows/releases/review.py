"""Human spot-checks on the MLflow server the stack already runs.

A night whose recipe sets ``review:`` logs a stratified sample of its kept examples (flows/releases/review_sample.py)
as MLflow traces into one review queue named after the night (``<prefix> <recipe> <run id>``), asking three
questions (infra/review_queue.py: pass/fail, a reason from a fixed list, free text). The sample is recorded in the
catalog relation ``review_samples``. Reviewers answer on MLflow's Review page (or through its API); an item they
mark complete (or decline) is reviewed.

``rlt review status`` counts what is sampled, reviewed and rejected (live, from MLflow). ``rlt review pull`` reads
the verdicts into the catalog relation ``reviews`` (a row per changed verdict; view ``reviews_latest``), then
audits every night held for review again (``audits.human_review.wait: hold``) and publishes those that now pass,
with the same compare-and-set as a night's own publish. A rejected explanation is kept out of later nights by
``filter.reject_reviewed`` (tasks/filter.py): ``rejected_explanation_ids`` is that list.

MLflow unreachable while a night logs its sample: one warning, the night goes on (its human_review audit, if any,
then has no sample: failed unless ``wait: skip``).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from data_contracts.errors import ExpectedError
from flows.recipe import AuditsConfig, Recipe
from flows.releases import review_sample
from flows.releases.review_config import ReviewConfig
from infra.catalog.lake import Catalog
from infra.settings import redact_text

log = logging.getLogger("rlt")


class ReviewError(ExpectedError, ValueError):
    """A review command that cannot do what was asked (no such run, no sample, MLflow unreachable)."""


# -- a night logs its sample ------------------------------------------------------------------------------
def log_night(catalog: Catalog, cfg: ReviewConfig, tracking_uri: str, distill_key: str, run_id: str, recipe: str,
              mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Sample the distill set, log the sample as traces into the night's queue, record it in ``review_samples``.
    A distill set sampled before (a cached night) is not logged again: its queue is the one to review."""
    from infra.review_queue import ReviewQueues

    done = catalog.rows("SELECT any_value(run_id) AS run_id, any_value(queue_name) AS queue, count(*) AS n FROM "
                        "review_samples WHERE list_contains(?, distill_key)", [[distill_key]])[0]
    if done["n"]:
        log.info("review: distill set %s was sampled by run %s (queue %r, %d examples); not logged again",
                 distill_key[:12], done["run_id"], done["queue"], done["n"])
        return {"queue": done["queue"], "sampled": done["n"], "logged": False}
    sample = review_sample.draw(review_sample.candidates(catalog, distill_key), cfg.sample, distill_key,
                                cfg.near_length_limit)
    if not sample:
        return {"queue": None, "sampled": 0, "logged": False}
    name = f"{cfg.queue_prefix} {recipe} {run_id}"[:100]
    queues = ReviewQueues(tracking_uri)
    queue_id = queues.create_queue(name, queues.ensure_schemas())
    trace_ids = queues.log_traces([review_sample.trace_payload(r, distill_key, run_id, recipe) for r in sample],
                                  mlflow_run_id)
    queues.add_items(queue_id, trace_ids)
    where = redact_text(tracking_uri)
    catalog.append("review_samples", [dict(run_id=run_id, distill_key=distill_key, queue_id=queue_id, queue_name=name,
                                           trace_id=t, example_id=r["example_id"], explanation_id=r["explanation_id"],
                                           problem_id=r["problem_id"], origin=r["origin"], stratum=r["stratum"],
                                           reward=r.get("reward"), tracking_uri=where)
                                      for r, t in zip(sample, trace_ids)], message="review sample")
    log.info("review: %d examples of %s logged to MLflow review queue %r (%s)", len(sample), distill_key[:12], name,
             where)
    return {"queue": name, "queue_id": queue_id, "sampled": len(sample), "logged": True}


def log_night_safely(catalog: Catalog, recipe: Recipe, tracking_uri: str, distill_key: str, run_id: str,
                     mlflow_run_id: str | None = None) -> dict[str, Any] | None:
    """flows/factory.py's hook: log the night's sample when the recipe asks; never fails the night."""
    if recipe.review is None:
        return None
    try:
        return log_night(catalog, recipe.review, tracking_uri, distill_key, run_id, recipe.name, mlflow_run_id)
    except Exception as exc:   # MLflow down or refusing: the data is committed; the review waits for a rerun
        log.warning("review: the night's sample was not logged to MLflow at %s: %s: %s", redact_text(tracking_uri),
                    type(exc).__name__, redact_text(str(exc))[:300])
        return None


# -- which night -------------------------------------------------------------------------------------------
def resolve_run(catalog: Catalog, ref: str = "latest") -> str:
    """The run id of a night that logged a sample: ``latest``, a run id, or a unique prefix of one."""
    runs = [r["run_id"] for r in catalog.rows("SELECT run_id, max(ts) AS ts FROM review_samples GROUP BY run_id "
                                              "ORDER BY ts DESC")]
    if not runs:
        raise ReviewError(f"no night has logged a review sample in {catalog.store.root} (set `review:` in the "
                          "recipe)")
    if ref == "latest":
        return runs[0]
    hits = [r for r in runs if r == ref] or [r for r in runs if r.startswith(ref)]
    if len(hits) != 1:
        raise ReviewError(f"{ref!r} names {'no' if not hits else 'more than one'} night with a review sample"
                          f" (nights: {', '.join(runs[:5])}{' ...' if len(runs) > 5 else ''})")
    return hits[0]


def _sample(catalog: Catalog, run_id: str) -> list[dict]:
    return catalog.rows("SELECT * FROM review_samples WHERE list_contains(?, run_id) ORDER BY example_id",
                        [[run_id]])


# -- status and pull ---------------------------------------------------------------------------------------
@dataclass
class Status:
    run_id: str
    queue: str
    queue_id: str
    distill_key: str
    sampled: int = 0
    reviewed: int = 0          # items marked complete (with a verdict) or declined
    declined: int = 0
    passed: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_stratum: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read(catalog: Catalog, tracking_uri: str, run_id: str) -> tuple[list[dict], list[dict]]:
    """The night's sample and, per sampled trace, its review row as MLflow holds it now (None when pending)."""
    from infra.review_queue import ReviewQueues

    sample = _sample(catalog, run_id)
    if not sample:
        raise ReviewError(f"run {run_id} logged no review sample")
    queues = ReviewQueues(tracking_uri)
    try:
        items = {i.trace_id: i for i in queues.items(sample[0]["queue_id"])}
        out = []
        for s in sample:
            item = items.get(s["trace_id"])
            if item is None or item.status == "pending":
                out.append(None)
                continue
            v = queues.verdict(s["trace_id"])
            if item.status == "declined":
                verdict = "declined"
            elif v.verdict is None:   # marked complete without a pass/fail answer: not a verdict yet
                out.append(None)
                continue
            else:
                verdict = "pass" if v.verdict else "fail"
            when = v.reviewed_ms or item.completed_ms
            out.append(dict(run_id=run_id, queue_id=s["queue_id"], trace_id=s["trace_id"], example_id=s["example_id"],
                            explanation_id=s["explanation_id"], verdict=verdict,
                            reason=v.reason if verdict == "fail" else None, comment=v.comment,
                            reviewer=item.completed_by or v.reviewer,
                            reviewed_at=dt.datetime.fromtimestamp(when / 1000, dt.timezone.utc) if when else None))
    except ExpectedError:
        raise
    except Exception as exc:
        raise ReviewError(f"MLflow at {redact_text(tracking_uri)} could not be read: {type(exc).__name__}: "
                          f"{redact_text(str(exc)).splitlines()[0][:300]}") from exc
    return sample, out


def status(catalog: Catalog, tracking_uri: str, ref: str = "latest") -> Status:
    run_id = resolve_run(catalog, ref)
    sample, reviews = _read(catalog, tracking_uri, run_id)
    st = Status(run_id, sample[0]["queue_name"], sample[0]["queue_id"], sample[0]["distill_key"], len(sample))
    st.by_stratum = {name: {"sampled": 0, "reviewed": 0, "rejected": 0} for name in review_sample.STRATA
                     if any(s["stratum"] == name for s in sample)}
    for s, r in zip(sample, reviews):
        by = st.by_stratum.setdefault(s["stratum"], {"sampled": 0, "reviewed": 0, "rejected": 0})
        by["sampled"] += 1
        if r is None:
            continue
        st.reviewed += 1
        by["reviewed"] += 1
        if r["verdict"] == "declined":
            st.declined += 1
        elif r["verdict"] == "pass":
            st.passed += 1
        else:
            st.rejected += 1
            by["rejected"] += 1
            st.by_reason[r["reason"] or "unspecified"] = st.by_reason.get(r["reason"] or "unspecified", 0) + 1
    return st


_COMPARED = ("verdict", "reason", "comment", "reviewer")


def pull(catalog: Catalog, tracking_uri: str, ref: str = "latest") -> dict[str, Any]:
    """Read the night's verdicts into ``reviews`` (only new or changed ones), then publish held nights that now
    pass their audits. Returns what changed."""
    run_id = resolve_run(catalog, ref)
    sample, reviews = _read(catalog, tracking_uri, run_id)
    have = {r["trace_id"]: r for r in catalog.rows("SELECT * FROM reviews_latest WHERE list_contains(?, queue_id)",
                                                   [[sample[0]["queue_id"]]])}
    new = [r for r in reviews if r is not None and
           (r["trace_id"] not in have or any(have[r["trace_id"]][k] != r[k] for k in _COMPARED))]
    catalog.append("reviews", new, message="reviews")
    log.info("review: %d new or changed verdict(s) of run %s pulled into `reviews` (%d of %d sampled reviewed)",
             len(new), run_id, sum(r is not None for r in reviews), len(sample))
    return {"run_id": run_id, "pulled": len(new), "reviewed": sum(r is not None for r in reviews),
            "sampled": len(sample), "releases": publish_held(catalog)}


def publish_held(catalog: Catalog) -> list[dict]:
    """Audit every night held for human review again; publish those that pass (compare-and-set against the
    release the hold was made at), fail those that fail, and supersede those whose alias moved meanwhile."""
    from flows.releases import aliases
    from flows.releases.audit import AuditFailed, audit_and_publish

    done = []
    for h in aliases.holds(catalog, "pending"):
        cfg = AuditsConfig.model_validate(h["audits"]["audits"])
        cur = aliases.current(catalog, h["alias"])
        now_key = cur["key"] if cur else None
        if now_key == h["key"]:   # another run of the same distill set was published meanwhile
            state, detail, summary = "published", f"{h['alias']} already points to {h['key'][:12]}", {}
        elif now_key != h["baseline"]:
            state, detail = "superseded", f"{h['alias']} moved to {(now_key or '(nothing)')[:12]} meanwhile"
            summary: dict[str, Any] = {}
        else:
            try:
                summary = audit_and_publish(catalog, cfg, h["audits"]["refs"], h["run_id"], record_hold=False)
            except AuditFailed as exc:
                state, detail, summary = "failed", str(exc), {"results": exc.results}
            else:
                if summary.get("pending"):
                    continue
                state, detail = "published", f"{h['alias']} -> {h['key'][:12]}"
        aliases.record_hold(catalog, h["alias"], h["key"], h["run_id"], state, h["baseline"], detail,
                            {**h["audits"], "results": summary.get("results", h["audits"].get("results"))})
        log.info("release hold of run %s: %s (%s)", h["run_id"], state, detail)
        done.append({"alias": h["alias"], "key": h["key"], "run_id": h["run_id"], "state": state, "detail": detail})
    return done


# -- the filter's feedback ---------------------------------------------------------------------------------
def rejected_explanation_ids(catalog: Catalog) -> list[str]:
    """Every explanation people rejected (latest verdict fail), sorted: what ``filter.reject_reviewed`` drops."""
    if not catalog.rows("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'reviews_latest'")[0]["n"]:
        return []
    return [r["explanation_id"] for r in catalog.rows(
        "SELECT DISTINCT explanation_id FROM reviews_latest WHERE verdict = 'fail' AND explanation_id IS NOT NULL "
        "ORDER BY 1")]


def with_rejections(catalog: Catalog, recipe: Recipe) -> Recipe:
    """The recipe with ``filter.rejected_ids`` filled from ``reviews`` when ``filter.reject_reviewed`` is on (the
    ids' digest then joins the filter's key: a new rejection re-filters, nothing upstream recomputes)."""
    if not recipe.filter.reject_reviewed:
        return recipe
    ids = tuple(rejected_explanation_ids(catalog))
    return recipe.model_copy(update={"filter": recipe.filter.model_copy(update={"rejected_ids": ids})})

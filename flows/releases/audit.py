"""Audits of a night's committed artifacts against the recipe's bounds (``audits:``) and the current release.

Each audit gives one row ``{name, figure, bound, passed, detail}``. Figures come from the catalog alone:

- ``min_yield``: the filter stage's yield (kept teacher explanations / candidate explanations, distill_set stats);
- ``max_quarantine_rate``: quarantined rows / source rows of the ingest (problems stats: quarantined / rows_in);
- ``max_reward_mean_shift``: |mean reward of the night's kept teacher rows - the current release's|;
- ``max_reward_ks``: the two-sample Kolmogorov-Smirnov statistic of those two reward samples;
- ``max_eval_regression``: per benchmark of the distilled student's evaluation, ``release ci_low - night ci_high``
  (how far the night's 95% CI lies below the release's); it fails when that gap exceeds the bound (bound 0: fail
  as soon as the CIs are disjoint with the night below).

- ``min_gain_over_baseline``: per benchmark, the distilled student's paired gain over the reference baseline
  student of the same night (``evaluate.baselines: [reference]``; flows/releases/baseline.py); it fails below the
  bound, so a night whose explanations teach no better than the reference solutions is not published.

- ``human_review``: the reject rate of the night's sample as people reviewed it (flows/releases/review.py: the
  sample in ``review_samples``, the verdicts ``rlt review pull`` read into ``reviews``); an unreviewed sample is
  *pending* with ``wait: hold`` (the night is committed, the alias waits: ``release_holds``), failed with
  ``wait: fail``, and not gated with ``wait: skip``.

Audits that compare with the current release pass with detail "no baseline" when the alias is not set yet (or the
release has no evaluation). A contamination audit does not exist yet (issue 14 part 3).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np

from data_contracts.errors import ExpectedError
from flows.recipe import AuditsConfig
from flows.releases.review_config import HumanReviewAudit
from infra.catalog.lake import Catalog

log = logging.getLogger("rlt")


class AuditFailed(ExpectedError, RuntimeError):
    """A night's artifacts failed an audit: the night is committed but not published."""

    def __init__(self, alias: str, results: list[dict]):
        self.alias, self.results = alias, results
        failed = [r for r in results if not r["passed"] and not r.get("pending")]
        super().__init__(f"audit failed, {alias!r} not moved: " + "; ".join(
            f"{r['name']} {_fmt(r['figure'])} vs bound {_fmt(r['bound'])}" + (f" ({r['detail']})" if r["detail"]
                                                                               else "") for r in failed))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- figures ---------------------------------------------------------------------------------------------
def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: sup |F_a(x) - F_b(x)| over the pooled sample (numpy only)."""
    x, y = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_statistic needs two non-empty samples")
    grid = np.concatenate([x, y])
    fa = np.searchsorted(x, grid, side="right") / x.size
    fb = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fa - fb)))


def mean_shift(a: Sequence[float], b: Sequence[float]) -> float:
    """|mean(a) - mean(b)|."""
    return float(abs(np.mean(np.asarray(a, dtype=float)) - np.mean(np.asarray(b, dtype=float))))


def _stats(catalog: Catalog, key: str | None) -> dict:
    rec = catalog.artifact(key) if key else None
    return json.loads(rec["stats_json"] or "{}") if rec else {}


def kept_rewards(catalog: Catalog, distill_key: str) -> list[float]:
    """Rewards of a distill set's teacher rows (reference fallbacks have none)."""
    out: list[float] = []
    for b in catalog.scan("distill_set", distill_key, ["reward"]):
        out.extend(v for v in b.column("reward").to_pylist() if v is not None)
    return out


def release_evals(catalog: Catalog, distill_key: str) -> dict[str, dict]:
    """benchmark -> {pass@1, ci_low, ci_high} of the newest distilled-student evaluation made from ``distill_key``
    (lineage: distill_set -> student_checkpoint -> eval_results)."""
    rows = catalog.rows(
        "SELECT e.key, e.stats_json FROM lineage l1 JOIN lineage l2 ON l2.parent_key = l1.child_key "
        "JOIN artifacts_committed e ON e.key = l2.child_key "
        "WHERE list_contains(?, l1.parent_key) AND e.name = 'eval_results' AND e.label = 'distilled' "
        "ORDER BY e.ts DESC", [[distill_key]])
    return json.loads(rows[0]["stats_json"] or "{}").get("benchmarks", {}) if rows else {}


# -- audits ----------------------------------------------------------------------------------------------
def _row(name: str, figure: Any, bound: Any, passed: bool, detail: str = "") -> dict:
    return {"name": name, "figure": figure, "bound": bound, "passed": bool(passed), "detail": detail}


def run_audits(catalog: Catalog, cfg: AuditsConfig, distill_key: str, problems_key: str | None = None,
               eval_key: str | None = None, baseline_key: str | None = None,
               reference_eval_key: str | None = None) -> list[dict]:
    """Every audit the recipe declares, on the night's artifacts; ``baseline_key``: the current release's
    distill set (None when the alias is not set); ``reference_eval_key``: the night's evaluation of the reference
    baseline student (``eval_reference``)."""
    out: list[dict] = []
    if cfg.min_yield is not None:
        st = _stats(catalog, distill_key)
        y = st.get("yield")
        out.append(_row("min_yield", y, cfg.min_yield, y is not None and y >= cfg.min_yield,
                        f"{st.get('kept_teacher')} of {st.get('candidates')} candidates kept" if st else "no stats"))
    if cfg.max_quarantine_rate is not None:
        st = _stats(catalog, problems_key)
        n_in, bad = st.get("rows_in"), st.get("quarantined")
        rate = (bad / n_in) if n_in else None
        out.append(_row("max_quarantine_rate", rate, cfg.max_quarantine_rate,
                        rate is not None and rate <= cfg.max_quarantine_rate,
                        f"{bad} of {n_in} source rows quarantined" if n_in else "no ingest stats"))
    if cfg.max_contaminated is not None:
        st = _stats(catalog, problems_key)
        hits = st.get("quarantine.contaminated", 0) if st else None
        out.append(_row("max_contaminated", hits, cfg.max_contaminated,
                        hits is not None and hits <= cfg.max_contaminated,
                        f"{hits} source row(s) matched an evaluation item (quarantine reason contaminated)"
                        if st else "no ingest stats"))
    if cfg.max_reward_mean_shift is not None or cfg.max_reward_ks is not None:
        new = kept_rewards(catalog, distill_key)
        old = kept_rewards(catalog, baseline_key) if baseline_key else []
        for name, bound, fn in (("max_reward_mean_shift", cfg.max_reward_mean_shift, mean_shift),
                                ("max_reward_ks", cfg.max_reward_ks, ks_statistic)):
            if bound is None:
                continue
            if baseline_key is None:
                out.append(_row(name, None, bound, True, "no baseline"))
            elif not new or not old:
                out.append(_row(name, None, bound, True, f"no kept rewards ({len(new)} new, {len(old)} in "
                                                         f"{baseline_key[:12]})"))
            else:
                fig = fn(new, old)
                out.append(_row(name, fig, bound, fig <= bound, f"{len(new)} vs {len(old)} rewards of "
                                                                f"{baseline_key[:12]}, mean {np.mean(new):.4g} vs "
                                                                f"{np.mean(old):.4g}"))
    if cfg.max_eval_regression is not None:
        bound = cfg.max_eval_regression
        new_ev = _stats(catalog, eval_key).get("benchmarks", {}) if eval_key else {}
        old_ev = release_evals(catalog, baseline_key) if baseline_key else {}
        if baseline_key is None or not old_ev:
            out.append(_row("max_eval_regression", None, bound, True,
                            "no baseline" if baseline_key is None else "the release has no evaluation"))
        for bench in sorted(set(new_ev) & set(old_ev)):
            n, o = new_ev[bench], old_ev[bench]
            gap = float(o["ci_low"] - n["ci_high"])
            out.append(_row(f"max_eval_regression[{bench}]", gap, bound, gap <= bound,
                            f"pass@1 {n['pass@1']:.3f} [{n['ci_low']:.3f}, {n['ci_high']:.3f}] vs release "
                            f"{o['pass@1']:.3f} [{o['ci_low']:.3f}, {o['ci_high']:.3f}]"))
    if cfg.min_gain_over_baseline is not None:
        out += gain_rows(catalog, cfg.min_gain_over_baseline, eval_key, reference_eval_key)
    if cfg.human_review is not None:
        out.append(human_review_row(catalog, cfg.human_review, distill_key))
    for r in out:
        log.info("audit %-28s %s (figure %s, bound %s) %s", r["name"],
                 "pending" if r.get("pending") else "pass" if r["passed"] else "FAIL",
                 _fmt(r["figure"]), _fmt(r["bound"]), r["detail"])
    return out


def gain_rows(catalog: Catalog, bound: float, eval_key: str | None, reference_eval_key: str | None) -> list[dict]:
    """``min_gain_over_baseline``: one row per benchmark, the distilled student's paired gain over the reference
    baseline student (flows/releases/baseline.py); failed when either evaluation is missing."""
    from flows.releases.baseline import gains_over_baseline

    if not eval_key or not reference_eval_key:
        return [_row("min_gain_over_baseline", None, bound, False, "no evaluation of the "
                     + ("distilled" if not eval_key else "reference baseline") + " student in this night")]
    gains = gains_over_baseline(catalog, eval_key, reference_eval_key)
    if not gains:
        return [_row("min_gain_over_baseline", None, bound, False, "the two evaluations share no graded item")]
    return [_row(f"min_gain_over_baseline[{bench}]", g["value"], bound, g["value"] >= bound,
                 f"distilled {g['distilled']:.3f} vs reference baseline {g['baseline']:.3f}: paired gain "
                 f"{g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] on {g['items']} items")
            for bench, g in gains.items()]


def human_review_row(catalog: Catalog, cfg: HumanReviewAudit, distill_key: str) -> dict:
    """The ``human_review`` audit: failed verdicts / verdicts of the distill set's logged sample (declined items
    are not needed); ``pending`` when too few verdicts are in and ``wait`` is hold."""
    verdicts = [r["verdict"] for r in catalog.rows(
        "SELECT v.verdict FROM review_samples s LEFT JOIN reviews_latest v USING (queue_id, trace_id) "
        "WHERE list_contains(?, s.distill_key)", [[distill_key]])]
    n, declined = len(verdicts), verdicts.count("declined")
    judged, failed = verdicts.count("pass") + verdicts.count("fail"), verdicts.count("fail")
    needed = min(cfg.sample or n, n - declined)
    rate = failed / judged if judged else None
    if n == 0:
        return _row("human_review", None, cfg.max_reject_rate, cfg.wait == "skip",
                    "no sample logged for review (recipe `review:` off, or MLflow was unreachable)")
    detail = f"{judged} of {needed} verdicts in, {failed} fail ({n} sampled, {declined} declined)"
    if judged >= needed:
        return _row("human_review", rate, cfg.max_reject_rate, rate is None or rate <= cfg.max_reject_rate, detail)
    if cfg.wait == "skip":
        return _row("human_review", rate, cfg.max_reject_rate, True, detail + "; not gated (wait: skip)")
    row = _row("human_review", rate, cfg.max_reject_rate, False, detail + f"; waiting for review (wait: {cfg.wait})")
    row["pending"] = cfg.wait == "hold"
    return row


def audit_and_publish(catalog: Catalog, cfg: AuditsConfig, refs: dict[str, str], run_id: str,
                      record_hold: bool = True) -> dict:
    """Audit the night (``refs``: output name -> artifact key of the flow's result); when every audit passes and
    publishing is on, move the alias (compare-and-set against the release the audits compared with). Raises
    AuditFailed when an audit fails (the alias stays where it is). An audit still pending (human review with
    ``wait: hold``) leaves the alias too, and records the night as held (``record_hold``) for `rlt review pull`."""
    from flows.releases import aliases as releases

    distill_key = refs["distill_set"]
    for attempt in range(3):
        cur = releases.current(catalog, cfg.publish_alias)
        base = cur["key"] if cur else None
        results = run_audits(catalog, cfg, distill_key, refs.get("problems"), refs.get("eval_distilled"), base,
                             refs.get("eval_reference"))
        pending = [r for r in results if r.get("pending")]
        summary: dict[str, Any] = {"alias": cfg.publish_alias, "baseline": base, "results": results,
                                   "passed": all(r["passed"] or r.get("pending") for r in results),
                                   "published": False, "pending": bool(pending)}
        if not summary["passed"]:
            raise AuditFailed(cfg.publish_alias, results)
        if pending and cfg.publish and base != distill_key:
            if record_hold:
                releases.record_hold(catalog, cfg.publish_alias, distill_key, run_id, "pending", base,
                                     "; ".join(r["detail"] for r in pending),
                                     {"results": results, "refs": refs, "audits": cfg.model_dump(mode="json")})
            log.info("release: %s held for human review (%s); `rlt review pull` publishes once the sample is "
                     "reviewed", cfg.publish_alias, "; ".join(r["detail"] for r in pending))
            return summary
        if cfg.publish and base == distill_key:
            log.info("release: %s already points to %s; not moved", cfg.publish_alias, distill_key[:12])
            summary["published"] = "unchanged"
        elif cfg.publish:
            audits = {"results": results, "baseline": base,
                      "refs": {k: v for k, v in refs.items() if k in ("problems", "eval_distilled", "eval_base",
                                                                       "eval_reference", "student_checkpoint")}}
            try:
                releases.move_alias(catalog, cfg.publish_alias, distill_key, "publish", expected=base, run_id=run_id,
                                    reason=("all audits passed" if results else "no audits declared") +
                                    ("" if record_hold else " once reviewed (rlt review pull)"), audits=audits)
            except releases.AliasConflict:
                if attempt == 2:
                    raise
                # another night moved the alias after our audits read it: audit again against the new release
                log.info("release: %s moved while this night was audited; auditing again", cfg.publish_alias)
                continue
            summary["published"] = True
        return summary
    raise AssertionError("unreachable")

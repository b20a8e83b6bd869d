"""Nights waiting for people: releases held for human review (``audits.human_review.wait: hold``) longer than a
maximum wait, and one ``review_pending`` alert per held night that went overdue.

A hold is pending from the moment its night committed (the catalog's ``release_holds``, flows/releases/aliases.py)
until ``rlt review pull`` publishes, fails or supersedes it. The holds already alerted about are remembered in
``<data root>/_alerts/reviews-pending.json`` (written whole, like the freshness check's state,
flows/releases/freshness.py), so an hourly cron pages once per overdue night, and only after a channel took the
alert. Used by ``rlt check reviews``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flows import alerts
from flows.releases import freshness
from flows.releases.aliases import holds
from flows.releases.freshness import FreshnessError
from infra.catalog.lake import Catalog
from infra.catalog.store import Store

if TYPE_CHECKING:
    from flows.recipe import Recipe

log = logging.getLogger("rlt")


@dataclass
class Overdue:
    alias: str
    key: str
    run_id: str
    held_at: str
    age_h: float

    @property
    def ident(self) -> str:
        return f"{self.alias}:{self.key}:{self.run_id}"


@dataclass
class ReviewWait:
    max_wait_h: float
    pending: int = 0                              # holds pending at all
    overdue: list[Overdue] = field(default_factory=list)
    alert: str = ""                               # sent | already sent | not sent | off ('' without --notify)

    @property
    def ok(self) -> bool:
        return not self.overdue

    def line(self) -> str:
        alert = f"; alert {self.alert}" if self.alert else ""
        if self.ok:
            return (f"ok: {self.pending} night(s) held for review, none for more than {self.max_wait_h:g} h"
                    if self.pending else "ok: no night is waiting for review")
        first = self.overdue[0]
        return (f"overdue: {len(self.overdue)} night(s) held for review longer than {self.max_wait_h:g} h; oldest: "
                f"run {first.run_id} ({first.alias} -> {first.key[:12]}) waiting {first.age_h:.1f} h; "
                f"`rlt review status {first.run_id}`{alert}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check(catalog: Catalog, max_wait_s: float, at: datetime | None = None) -> ReviewWait:
    """The pending holds and which of them have waited longer than ``max_wait_s``."""
    pending = holds(catalog, "pending")
    out = ReviewWait(max_wait_s / 3600, pending=len(pending))
    for h in pending:
        ts = h["ts"] if h["ts"].tzinfo else h["ts"].replace(tzinfo=timezone.utc)
        age_s = ((at or freshness.now()) - ts).total_seconds()
        if age_s > max_wait_s:
            out.overdue.append(Overdue(h["alias"], h["key"], h["run_id"], ts.isoformat(), round(age_s / 3600, 2)))
    return out


def settle(max_wait: str | None, recipe: "Recipe | None") -> float:
    """The maximum wait in seconds: given, else the recipe's ``alerts.max_review_wait_h``."""
    if max_wait:
        return freshness.parse_age(max_wait)
    if recipe is not None and recipe.alerts.max_review_wait_h:
        return recipe.alerts.max_review_wait_h * 3600
    raise FreshnessError("give a maximum wait (--max-wait 24h), or a recipe with alerts.max_review_wait_h set")


def run_check(catalog: Catalog, store: Store, max_wait_s: float, recipe: "Recipe | None" = None,
              notify: bool = False) -> ReviewWait:
    """Check the holds; with ``notify``, one ``review_pending`` alert naming the nights that went overdue since the
    last alert (none new: nothing is sent)."""
    if notify and recipe is None:
        raise FreshnessError("notify needs a recipe: the alert channels are its `alerts.channels_env`")
    result = check(catalog, max_wait_s)
    if notify and recipe is not None and result.overdue:
        result.alert = _notify(store, recipe, result)
    return result


def _state_path(store: Store) -> str:
    return store.path("_alerts", "reviews-pending.json")


def _notify(store: Store, recipe: "Recipe", result: ReviewWait) -> str:
    if not recipe.alerts.wants("review_pending"):
        return "off (no channel for review_pending in the recipe's alerts)"
    path = _state_path(store)
    try:
        seen = set(store.read_json(path).get("notified", [])) if store.exists(path) else set()
    except Exception as exc:   # an unreadable state file: alert again rather than stay silent
        log.warning("review wait state %s unreadable (%s); alerting again", path, type(exc).__name__)
        seen = set()
    new = [o for o in result.overdue if o.ident not in seen]
    if not new:
        return "already sent for these nights"
    lines = "\n".join(f"- run {o.run_id}: {o.alias} -> {o.key[:12]}, held since {o.held_at} ({o.age_h:.1f} h)"
                      for o in new)
    body = (f"{len(new)} night(s) of recipe {recipe.name} wait for human review longer than {result.max_wait_h:g} h; "
            f"their release does not move until the sample is reviewed.\n{lines}\n"
            f"look: rlt --data-root {store.root} review status <run>; then rlt --data-root {store.root} review pull")
    alert = alerts.Alert("review_pending", f"rlt: {len(new)} night(s) wait for review ({recipe.name})", body)
    if not alerts.send(recipe.alerts, alert):
        return "not sent (see the warning above)"
    store.write_json(path, {"notified": sorted(seen | {o.ident for o in new}), "at": freshness.now().isoformat()})
    return "sent"

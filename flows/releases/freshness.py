"""Is a release fresh? How long ago an alias (``current``) last moved, against a maximum age; and, when it is stale,
one ``stale_release`` alert per staleness episode.

An episode is one move of the alias (its key and the time of the move, from the catalog's ``releases`` history) or
"never set". The move already alerted about is remembered in a small JSON file on the store,
``<data root>/_alerts/freshness-<alias>.json`` (written whole: a temporary file renamed into place locally, one PUT
on S3), so an hourly cron pages once while the alias stays where it is, and again only after the alias moved and
went stale anew. The file is written only once a channel took the alert: a failed send is tried again next time.
It holds keys and times, never a channel URL. Used by ``rlt check freshness`` and the ``freshness_check`` flow.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from data_contracts.errors import ExpectedError
from flows import alerts
from flows.releases.aliases import current
from infra.catalog.lake import Catalog
from infra.catalog.store import Store

if TYPE_CHECKING:
    from flows.recipe import Recipe

log = logging.getLogger("rlt")

_AGE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class FreshnessError(ExpectedError, ValueError):
    """A freshness check asked in a way that cannot work (a bad --max-age, --notify without channels)."""


class StaleRelease(ExpectedError, RuntimeError):
    """The alias is stale or was never set (raised by the freshness_check flow, so its run shows Failed)."""


def parse_age(text: str) -> float:
    """``26h``, ``90m``, ``2d``, ``45s`` (a number and one unit) -> seconds."""
    m = _AGE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise FreshnessError(f"max age {text!r}: give a positive number and a unit, e.g. 26h, 90m, 2d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Freshness:
    alias: str
    status: Literal["fresh", "stale", "never_set"]
    max_age_h: float
    key: str | None = None
    moved_at: str | None = None   # ISO time of the alias's last move
    age_h: float | None = None
    action: str = ""              # publish | promote | rollback
    run_id: str = ""
    alert: str = ""               # sent | already sent | not sent | off ('' without --notify)

    @property
    def fresh(self) -> bool:
        return self.status == "fresh"

    def episode(self) -> str:
        """The identity of the alias's current position: one alert per episode."""
        return f"{self.key}@{self.moved_at}" if self.key else "never set"

    def line(self) -> str:
        alert = f"; alert {self.alert}" if self.alert else ""
        if self.status == "never_set":
            return f"stale: alias {self.alias!r} was never set (no release yet){alert}"
        moved = (f"{self.alias} -> {self.key}, moved {self.age_h:.1f} h ago ({self.action}"
                 f"{' by run ' + self.run_id if self.run_id else ''})")
        if self.fresh:
            return f"fresh: {moved}, within the {self.max_age_h:g} h allowed"
        return f"stale: {moved}, more than the {self.max_age_h:g} h allowed{alert}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(catalog: Catalog, alias: str, max_age_s: float, at: datetime | None = None) -> Freshness:
    """Where ``alias`` points and how long ago it moved, against ``max_age_s``."""
    row = current(catalog, alias)
    max_age_h = max_age_s / 3600
    if row is None:
        return Freshness(alias, "never_set", max_age_h)
    ts = row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=timezone.utc)
    age_s = ((at or now()) - ts).total_seconds()
    return Freshness(alias, "fresh" if age_s <= max_age_s else "stale", max_age_h, key=row["key"],
                     moved_at=ts.isoformat(), age_h=round(age_s / 3600, 2), action=row["action"],
                     run_id=row["run_id"] or "")


def settle(alias: str | None, max_age: str | None, recipe: "Recipe | None") -> tuple[str, float]:
    """The alias (given, else the recipe's audits.publish_alias, else current) and the maximum age in seconds
    (given, else the recipe's alerts.max_release_age_h)."""
    alias = alias or (recipe.audits.publish_alias if recipe is not None else "current")
    if max_age:
        return alias, parse_age(max_age)
    if recipe is not None and recipe.alerts.max_release_age_h:
        return alias, recipe.alerts.max_release_age_h * 3600
    raise FreshnessError("give a max age (--max-age 26h), or a recipe with alerts.max_release_age_h set")


def run_check(catalog: Catalog, store: Store, alias: str, max_age_s: float, recipe: "Recipe | None" = None,
              notify: bool = False) -> Freshness:
    """Check ``alias``; when it is not fresh and ``notify``, alert through ``recipe``'s channels once per episode."""
    if notify and recipe is None:
        raise FreshnessError("notify needs a recipe: the alert channels are its `alerts.channels_env`")
    result = check(catalog, alias, max_age_s)
    if notify and recipe is not None and not result.fresh:
        result.alert = notify_stale(store, recipe.alerts, result, recipe.name)
    return result


def _state_path(store: Store, alias: str) -> str:
    return store.path("_alerts", f"freshness-{alias}.json")


def notify_stale(store: Store, cfg: alerts.AlertsConfig, f: Freshness, recipe: str) -> str:
    """Send one ``stale_release`` alert for this staleness episode; what happened, for the output line."""
    if not cfg.wants("stale_release"):
        return "off (no channel for stale_release in the recipe's alerts)"
    path = _state_path(store, f.alias)
    try:
        seen = store.read_json(path).get("notified") if store.exists(path) else None
    except Exception as exc:   # an unreadable state file: alert again rather than stay silent
        log.warning("freshness state %s unreadable (%s); alerting again", path, type(exc).__name__)
        seen = None
    if seen == f.episode():
        return "already sent for this release"
    if not alerts.send(cfg, stale_alert(f, recipe, store.root)):
        return "not sent (see the warning above)"
    store.write_json(path, {"alias": f.alias, "notified": f.episode(), "at": now().isoformat()})
    return "sent"


def stale_alert(f: Freshness, recipe: str, root: str) -> alerts.Alert:
    head = f.line().removeprefix("stale: ")
    body = (f"{head}.\nrecipe {recipe}; data root {root}\n"
            f"look: rlt --data-root {root} releases {f.alias}; rlt --data-root {root} catalog sql "
            "\"SELECT run_id, status, detail, ts FROM runs_latest ORDER BY ts DESC LIMIT 5\"")
    return alerts.Alert("stale_release", f"rlt: release {f.alias!r} is stale ({recipe})", body)

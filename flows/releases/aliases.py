"""Named release aliases (``current``, or any name): write-audit-publish's last step.

A night's committed artifacts are its staging area: nothing consumes a distill set as a release until an alias
points at it. The catalog relation ``releases`` is the alias history, append-only (one row per move: publish by a
night whose audits all passed, promote or rollback by hand, each with who and why); the view ``aliases_current``
is the latest row per alias. A move is one catalog transaction that first re-reads where the alias points and
refuses when that is no longer what the mover saw (compare-and-set), so two nights publishing at once cannot lose
an update silently.
"""
from __future__ import annotations

import getpass
import json
import logging
import re
import socket
from typing import Any

from data_contracts.errors import ExpectedError
from infra.catalog.lake import Catalog
from infra.catalog.locks import acquire, owner_info

log = logging.getLogger("rlt")

DEFAULT_ALIAS = "current"
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ACTIONS = ("publish", "promote", "rollback")
_UNSET = object()


class ReleaseError(ExpectedError, ValueError):
    """An alias move that cannot be made as asked (unknown key, no reason given, nothing to roll back to)."""


class AliasConflict(ReleaseError):
    """The alias moved between reading it and moving it (another night or person published meanwhile)."""


def actor() -> str:
    """user@host of whoever moves an alias."""
    try:
        user = getpass.getuser()
    except Exception:   # no login name (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or "") or alias == "latest":   # 'latest' is export's newest distill set
        raise ReleaseError(f"alias {alias!r}: use a name of letters, digits, '_', '.', '-' starting with a letter")
    return alias


def _has_releases(catalog: Catalog) -> bool:
    return bool(catalog.rows("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'aliases_current'")[0]["n"])


def current(catalog: Catalog, alias: str = DEFAULT_ALIAS) -> dict | None:
    """The latest row of ``alias`` (its key, who moved it, the audits), or None when it was never set."""
    if not _has_releases(catalog):   # a read-only handle on a catalog written before releases existed
        return None
    rows = catalog.rows("SELECT * FROM aliases_current WHERE list_contains(?, alias)", [[alias]])
    return rows[0] if rows else None


def alias_lookup(catalog: Catalog, ref: str) -> str | None:
    """flows/releases/export.py's hook: the distill set key ``ref`` names as an alias, or None when it is not one."""
    if not ALIAS_RE.match(ref or ""):
        return None
    row = current(catalog, ref)
    return row["key"] if row else None


def history(catalog: Catalog, alias: str | None = None) -> list[dict]:
    """Every move of ``alias`` (or of every alias), newest first, with audits_json decoded into ``audits``."""
    if not _has_releases(catalog):
        return []
    if alias is None:
        rows = catalog.rows("SELECT * FROM releases ORDER BY ts DESC")
    else:
        rows = catalog.rows("SELECT * FROM releases WHERE list_contains(?, alias) ORDER BY ts DESC", [[alias]])
    for r in rows:
        r["audits"] = json.loads(r.pop("audits_json") or "{}")
    return rows


def resolve_distill_set(catalog: Catalog, ref: str) -> str:
    """A committed distill set's full key from a key or a unique prefix (>= 8 characters)."""
    ref = ref.strip()
    if len(ref) < 8:
        raise ReleaseError(f"{ref!r}: give a distill_set key or a unique key prefix of at least 8 characters")
    rows = catalog.rows("SELECT key, name FROM artifacts_committed WHERE starts_with(key, ?)", [ref])
    sets = [r for r in rows if r["name"] == "distill_set"]
    if not sets:
        what = f" (it is a {rows[0]['name']})" if len(rows) == 1 else ""
        raise ReleaseError(f"{ref!r} names no committed distill_set in {catalog.store.root}{what}")
    if len(sets) > 1:
        raise ReleaseError(f"{ref!r} is ambiguous: {', '.join(r['key'][:16] for r in sets)}")
    return sets[0]["key"]


def move_alias(catalog: Catalog, alias: str, key: str, action: str, *, expected: Any = _UNSET, run_id: str = "",
               reason: str = "", audits: dict | None = None, who: str | None = None) -> dict:
    """Point ``alias`` at distill set ``key`` in one transaction and append the move to ``releases``.

    ``expected`` is the key the mover saw the alias at (None: not set yet). Inside the transaction the alias is
    read again; if it moved meanwhile, AliasConflict is raised and nothing is written. Without ``expected`` the
    move is unconditional (it still records the key it replaced)."""
    check_alias(alias)
    if action not in ACTIONS:
        raise ReleaseError(f"action {action!r}: one of {', '.join(ACTIONS)}")
    rec = catalog.artifact(key)
    if rec is None or rec["name"] != "distill_set":
        raise ReleaseError(f"{key} is not a committed distill_set in {catalog.store.root}")
    row = dict(alias=alias, key=key, action=action, run_id=run_id, actor=who or actor(), reason=reason,
               audits_json=json.dumps(audits or {}, default=str, sort_keys=True))
    # The alias's lock makes read-compare-append atomic on every catalog: SQLite serialises write transactions
    # anyway, but two PostgreSQL transactions that both only append to `releases` would both commit (DuckLake does
    # not see two appends as a conflict), and the compare-and-set would lose an update.
    lease = acquire(catalog.location.locks(), f"alias:{alias}", owner_info(run_id), poll_s=0.2, timeout_s=120)
    try:
        with catalog.transaction(f"release {alias}") as con:
            got = con.execute("SELECT key FROM lake.main.releases WHERE list_contains(?, alias) ORDER BY ts DESC "
                              "LIMIT 1", [[alias]]).fetchall()
            now_key = got[0][0] if got else None
            if expected is not _UNSET and now_key != expected:
                raise AliasConflict(f"alias {alias!r} moved meanwhile: it points to {now_key or '(nothing)'}, not "
                                    f"{expected or '(nothing)'} as read before; {action} of {key} not recorded "
                                    "(re-read `rlt releases` and retry)")
            row["previous_key"] = now_key
            Catalog._insert(con, "releases", [row])
    finally:
        lease.release()
    log.info("release: %s %s -> %s (%s by %s%s)", alias, (now_key or "(none)")[:12], key[:12], action, row["actor"],
             f": {reason}" if reason else "")
    return row


def promote(catalog: Catalog, ref: str, alias: str = DEFAULT_ALIAS, reason: str = "") -> dict:
    """Point ``alias`` at the distill set ``ref`` (key or unique prefix) by hand; a reason is required."""
    if not (reason or "").strip():
        raise ReleaseError("promote needs --reason: every hand move of an alias records why")
    key = resolve_distill_set(catalog, ref)
    cur = current(catalog, check_alias(alias))
    return move_alias(catalog, alias, key, "promote", expected=cur["key"] if cur else None, reason=reason.strip())


def rollback_target(rows: list[dict]) -> str | None:
    """From an alias's history (newest first): the key it pointed to before its current key was set. Rolling back
    twice walks further back (the row that set the current key by publish/promote is the reference point)."""
    if not rows:
        return None
    cur = rows[0]["key"]
    start = next((i for i, r in enumerate(rows) if r["key"] == cur and r["action"] != "rollback"), 0)
    return next((r["key"] for r in rows[start + 1:] if r["key"] != cur), None)


def rollback(catalog: Catalog, alias: str = DEFAULT_ALIAS, reason: str = "") -> dict:
    """Move ``alias`` back to the key it pointed to before its current one; a reason is required."""
    if not (reason or "").strip():
        raise ReleaseError("rollback needs --reason: every hand move of an alias records why")
    rows = history(catalog, check_alias(alias))
    if not rows:
        raise ReleaseError(f"alias {alias!r} was never set: nothing to roll back")
    target = rollback_target(rows)
    if target is None:
        raise ReleaseError(f"alias {alias!r} has no earlier release than {rows[0]['key']}: nothing to roll back to")
    return move_alias(catalog, alias, target, "rollback", expected=rows[0]["key"], reason=reason.strip())


# -- nights held for human review (audits.human_review.wait: hold; flows/releases/review.py publishes them) -------
HOLD_STATES = ("pending", "published", "failed", "superseded")


def record_hold(catalog: Catalog, alias: str, key: str, run_id: str, state: str, baseline: str | None,
                detail: str = "", audits: dict | None = None) -> None:
    """Append a state of the night ``run_id``'s hold of ``alias`` at distill set ``key`` to ``release_holds``."""
    if state not in HOLD_STATES:
        raise ReleaseError(f"hold state {state!r}: one of {', '.join(HOLD_STATES)}")
    catalog.append("release_holds", [dict(alias=alias, key=key, run_id=run_id, state=state, baseline=baseline,
                                          detail=detail[:2000], audits_json=json.dumps(audits or {}, default=str,
                                                                                       sort_keys=True))],
                   message="release hold")


def holds(catalog: Catalog, state: str | None = "pending", alias: str | None = None) -> list[dict]:
    """The latest state of every hold (only those in ``state``; None: all), oldest first, audits decoded."""
    if not catalog.rows("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'release_holds_latest'")[0]["n"]:
        return []   # a read-only handle on a catalog written before holds existed
    rows = catalog.rows("SELECT * FROM release_holds_latest ORDER BY ts")
    out = []
    for r in rows:
        if (state is None or r["state"] == state) and (alias is None or r["alias"] == alias):
            r["audits"] = json.loads(r.pop("audits_json") or "{}")
            out.append(r)
    return out

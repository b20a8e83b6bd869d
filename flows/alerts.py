"""Alerts: failed or crashed runs, failed audits and a stale release reach people through Apprise channels.

The recipe's ``alerts:`` section names *environment variables* (``channels_env``), each holding one Apprise URL
(``slack://...``, ``mailto://...``, ``json://host:port/path`` for a plain HTTP endpoint, ...). The URL may carry a
token, so it stays in the environment: it is read at send time only and never logged, never written to the catalog,
MLflow or a report; logs name the variable and the URL's scheme. No channel configured: every alert is a no-op.

A send that fails (a refused connection, a URL Apprise does not know, a variable that is not set) never fails the
run that sends it: it logs one WARNING line and the run goes on. Not a stage config: no key depends on it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("rlt")

Event = Literal["run_failed", "audit_failed", "stale_release", "review_pending"]
EVENTS: tuple[Event, ...] = ("run_failed", "audit_failed", "stale_release", "review_pending")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# loggers that print a channel's full URL (apprise at DEBUG/INFO, urllib3's connection lines): silenced while sending
_CHATTY = ("apprise", "urllib3")
MAX_DETAIL = 800   # characters of an error message in a notification body


class AlertsConfig(BaseModel):
    """Where alerts go (``channels_env``: names of environment variables, each holding an Apprise URL) and which
    events are sent. Empty ``channels_env`` (the default): alerts are off."""

    model_config = ConfigDict(extra="forbid")
    channels_env: list[str] = Field(default_factory=list, description="environment variables holding one Apprise "
                                    "URL each, e.g. RLT_ALERT_URL (the URL itself never goes in a recipe)")
    on: list[Event] = Field(default_factory=lambda: list(EVENTS), description="events that notify")
    max_release_age_h: Optional[float] = Field(default=None, gt=0, description="`rlt check freshness --recipe R`'s "
                                               "default --max-age, in hours")
    max_review_wait_h: Optional[float] = Field(default=None, gt=0, description="`rlt check reviews --recipe R`'s "
                                               "default --max-wait, in hours")

    @field_validator("channels_env")
    @classmethod
    def _names_not_urls(cls, names: list[str]) -> list[str]:
        for n in names:
            if "://" in n:
                raise ValueError("channels_env lists names of environment variables, not URLs (a URL may carry a "
                                 "token): e.g. export RLT_ALERT_URL='slack://...' and write channels_env: "
                                 "[RLT_ALERT_URL]")
            if not _ENV_NAME.match(n):
                raise ValueError(f"channels_env: {n!r} is not an environment variable name")
        return names

    def wants(self, event: Event) -> bool:
        return bool(self.channels_env) and event in self.on


@dataclass(frozen=True)
class Alert:
    event: Event
    title: str
    body: str


def scheme(url: str) -> str:
    """What a log line may say about a channel: its scheme only (the rest may hold a token)."""
    head = url.split("://", 1)[0] if "://" in url else "?"
    return f"{head}://" if _ENV_NAME.match(head) else "?://"


def send(cfg: AlertsConfig, alert: Alert, env: Mapping[str, str] | None = None) -> int:
    """Notify every channel of ``cfg`` when it wants ``alert.event``. Returns how many channels took it; never
    raises (a failure is one WARNING line per channel, without the URL)."""
    if not cfg.wants(alert.event):
        return 0
    env = os.environ if env is None else env
    sent = 0
    for name in cfg.channels_env:
        url = env.get(name, "").strip()
        if not url:
            log.warning("alert %s not sent through $%s: the variable is not set", alert.event, name)
            continue
        problem = _notify(url, alert)
        if problem:
            log.warning("alert %s not sent through $%s (%s): %s; the run goes on", alert.event, name, scheme(url),
                        problem)
        else:
            sent += 1
            log.info("alert %s sent through $%s (%s)", alert.event, name, scheme(url))
    return sent


def _notify(url: str, alert: Alert) -> str:
    """Send through one Apprise URL; '' when it went through, else why not (never the URL)."""
    try:
        import apprise

        from infra.settings import redact_text

        with _quiet(_CHATTY):
            box = apprise.Apprise()
            if not box.add(url):
                return "not an Apprise URL Apprise can use"
            kind = (apprise.NotifyType.WARNING if alert.event in ("stale_release", "review_pending")
                    else apprise.NotifyType.FAILURE)
            title, body = (redact_text(t).replace(url, "***") for t in (alert.title, alert.body))
            ok = box.notify(title=title, body=body, notify_type=kind)
        return "" if ok else "the channel did not accept it (unreachable or refused)"
    except Exception as exc:   # an alert must never fail what sends it
        return f"{type(exc).__name__} while sending"


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# -- the messages ------------------------------------------------------------------------------------------
def _short(text: str, n: int = MAX_DETAIL) -> str:
    from infra.settings import redact_text

    text = " ".join(redact_text(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def run_failed(recipe: str, run_id: str, flow: str, step: str, exc: BaseException, root: str) -> Alert:
    """A run that ended failed or crashed: where it stopped and the error's one line."""
    what = f"the {step} step" if step in ("plan", "audit", "report", "finish") else f"stage {step}"
    error = _short(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    body = (f"recipe {recipe}, run {run_id} ({flow}) failed at {what}.\n"
            f"error: {error}\n"
            f"look: rlt --data-root {root} catalog sql \"SELECT stage, label, status, detail FROM stage_runs "
            f"WHERE run_id = '{run_id}' ORDER BY ts\"; rerun the same command to resume (committed work is kept)")
    return Alert("run_failed", f"rlt: {recipe} failed at {what}", body)


def audit_failed(recipe: str, run_id: str, alias: str, results: list[dict], report: str, root: str) -> Alert:
    """A night whose audits failed: which, with figure and bound; the alias stayed where it was."""
    failed = [r for r in results if not r.get("passed")]
    lines = "\n".join(f"- {r['name']}: {r.get('figure')} vs bound {r.get('bound')}"
                      + (f" ({_short(str(r['detail']), 200)})" if r.get("detail") else "") for r in failed)
    body = (f"recipe {recipe}, run {run_id}: {len(failed)} audit(s) failed; alias {alias!r} not moved.\n{lines}\n"
            f"look: {report or f'rlt --data-root {root} report {run_id}'}; rlt --data-root {root} releases {alias}")
    return Alert("audit_failed", f"rlt: {recipe} audit failed ({', '.join(r['name'] for r in failed)})", body)

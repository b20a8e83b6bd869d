"""`rlt check freshness` (issue 25): fresh -> exit 0, stale or never set -> exit 2; with --notify one
`stale_release` alert per staleness episode to a real HTTP receiver on 127.0.0.1, again after the alias moved and
went stale anew; the `freshness_check` flow does the same."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import yaml

from data_contracts import distill_set
from flows.cli import main
from flows.releases import freshness
from flows.releases.aliases import move_alias
from infra.engine.context import RunContext
from tests.fake_http import PostRecorder
from tests.tasks.helpers import commit_rows

SECRET = "tok-77c1d0e5aa"


@pytest.fixture
def released(tmp_path):
    """A data root whose alias `current` points at a (hand-made) committed distill set, moved just now."""
    root = str(tmp_path / "data")
    ctx = RunContext(root, tracking=False)
    key = commit_rows(ctx, "distill_set", distill_set.CONTRACT, [distill_set.EXAMPLE], seed="a").key
    move_alias(ctx.catalog, "current", key, "promote", reason="test")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "fresh-test", "alerts": {"channels_env": ["RLT_TEST_ALERT_URL"]}}))
    yield {"root": root, "ctx": ctx, "key": key, "recipe": str(recipe)}
    ctx.catalog.close()


def _later(monkeypatch, days: float) -> None:
    real = freshness.now
    monkeypatch.setattr(freshness, "now", lambda: real() + timedelta(days=days))


def _check(capsys, root: str, *args: str) -> tuple[int, str]:
    rc = main(["--data-root", root, "check", "freshness", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_parse_age():
    assert [freshness.parse_age(t) for t in ("26h", "90m", "2d", "45s", "1.5h")] == \
        [26 * 3600, 5400, 2 * 86400, 45, 5400]
    for bad in ("26", "h", "-1h", "0h", "3w", "1h30m"):
        with pytest.raises(freshness.FreshnessError, match="26h, 90m, 2d"):
            freshness.parse_age(bad)


def test_fresh_stale_notify_once_per_episode(released, capsys, monkeypatch):
    root, recipe = released["root"], released["recipe"]
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        rc, out = _check(capsys, root, "--alias", "current", "--max-age", "26h", "--notify", "--recipe", recipe)
        assert rc == 0 and out.strip().startswith(f"fresh: current -> {released['key']}, moved 0.0 h ago"), out
        assert "within the 26 h allowed" in out and rec.posts == []

        _later(monkeypatch, 2)   # two days on: stale
        rc, out = _check(capsys, root, "--max-age", "26h", "--notify", "--recipe", recipe)
        assert rc == 2 and out.strip().startswith("stale: current -> ") and "alert sent" in out, out
        assert len(rec.posts) == 1 and rec.posts[0][1]["type"] == "warning"
        assert rec.posts[0][1]["title"] == "rlt: release 'current' is stale (fresh-test)"
        assert released["key"] in rec.posts[0][1]["message"] and "more than the 26 h" in rec.posts[0][1]["message"]
        rc, out = _check(capsys, root, "--max-age", "26h", "--notify", "--recipe", recipe)   # the next hourly cron
        assert rc == 2 and "alert already sent for this release" in out and len(rec.posts) == 1, out
        rc, out = _check(capsys, root, "--max-age", "26h", "--json")   # without --notify: no alert, JSON
        got = json.loads(out)
        assert rc == 2 and got["status"] == "stale" and got["key"] == released["key"] and got["alert"] == ""
        assert got["age_h"] >= 47.9 and len(rec.posts) == 1

        # the alias moves again and goes stale anew: a new episode, one more alert
        ctx = released["ctx"]
        other = commit_rows(ctx, "distill_set", distill_set.CONTRACT, [distill_set.EXAMPLE], seed="b").key
        move_alias(ctx.catalog, "current", other, "promote", reason="test again")
        for _ in range(2):
            rc, out = _check(capsys, root, "--max-age", "1d", "--notify", "--recipe", recipe)
            assert rc == 2 and other in out
        assert len(rec.posts) == 2 and other in rec.posts[1][1]["message"]
    state = json.loads(open(f"{root}/_alerts/freshness-current.json").read())
    assert state["notified"].startswith(other) and SECRET not in json.dumps(state)


def test_never_set_alias_and_bad_arguments_are_one_line_exit_2(released, capsys):
    root = released["root"]
    rc, out = _check(capsys, root, "--alias", "nightly", "--max-age", "26h")
    assert rc == 2 and out.strip() == "stale: alias 'nightly' was never set (no release yet)"
    rc, out = _check(capsys, root, "--max-age", "soon")
    assert rc == 2 and out.strip().startswith("rlt: max age 'soon': give a positive number and a unit")
    rc, out = _check(capsys, root)
    assert rc == 2 and "give a max age (--max-age 26h)" in out
    rc, out = _check(capsys, root, "--max-age", "1h", "--notify")
    assert rc == 2 and out.strip() == "rlt: --notify needs --recipe: the alert channels are the recipe's " \
                                      "`alerts.channels_env`"


def test_without_channels_notify_sends_nothing(released, capsys, tmp_path, monkeypatch):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"name": "plain", "alerts": {"max_release_age_h": 1}}))
    _later(monkeypatch, 1)
    rc, out = _check(capsys, released["root"], "--notify", "--recipe", str(plain))   # max age from the recipe
    assert rc == 2 and "more than the 1 h allowed" in out and "alert off" in out, out


def test_freshness_check_flow(released, monkeypatch):
    from flows.checks import freshness_check

    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        got = freshness_check(root=released["root"], max_age="26h", recipe_path=released["recipe"])
        assert got["status"] == "fresh" and got["key"] == released["key"]
        _later(monkeypatch, 2)
        state = freshness_check(root=released["root"], max_age="26h", recipe_path=released["recipe"],
                                return_state=True)
        assert state.is_failed()
        with pytest.raises(freshness.StaleRelease, match="stale: current -> .* alert sent"):
            state.result()
    assert len(rec.posts) == 1


def test_check_reviews_overdue_hold_alerts_once_then_ok_once_published(released, capsys, monkeypatch):
    """`rlt check reviews`: a night held for human review (release_holds, flows/releases/aliases.py) past
    --max-wait is exit 2 with one `review_pending` alert across hourly checks; published, it is exit 0."""
    from flows.releases.aliases import record_hold

    root, recipe, ctx = released["root"], released["recipe"], released["ctx"]

    def check(*args: str) -> tuple[int, str]:
        rc = main(["--data-root", root, "check", "reviews", *args])
        out = capsys.readouterr()
        return rc, out.out + out.err

    rc, out = check("--max-wait", "24h")
    assert rc == 0 and out.strip() == "ok: no night is waiting for review", out
    record_hold(ctx.catalog, "current", "k" * 16, "run-held-1", "pending", released["key"])
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        rc, out = check("--max-wait", "24h", "--notify", "--recipe", recipe)
        assert rc == 0 and "1 night(s) held for review, none for more than 24 h" in out and rec.posts == [], out
        _later(monkeypatch, 2)
        rc, out = check("--max-wait", "24h", "--notify", "--recipe", recipe)
        assert rc == 2 and out.startswith("overdue: 1 night(s) held for review longer than 24 h") and \
            "run run-held-1" in out and "alert sent" in out, out
        assert len(rec.posts) == 1 and rec.posts[0][1]["title"] == "rlt: 1 night(s) wait for review (fresh-test)"
        assert "run-held-1" in rec.posts[0][1]["message"] and SECRET not in out
        rc, out = check("--max-wait", "24h", "--notify", "--recipe", recipe)   # the next hourly cron
        assert rc == 2 and "alert already sent for these nights" in out and len(rec.posts) == 1, out
        rc, out = check("--json", "--max-wait", "24h")
        assert rc == 2 and json.loads(out)["overdue"][0]["run_id"] == "run-held-1"
        record_hold(ctx.catalog, "current", "k" * 16, "run-held-1", "published", released["key"])
        rc, out = check("--max-wait", "24h", "--notify", "--recipe", recipe)
        assert rc == 0 and len(rec.posts) == 1, out
    rc, out = check()
    assert rc == 2 and "give a maximum wait (--max-wait 24h)" in out, out

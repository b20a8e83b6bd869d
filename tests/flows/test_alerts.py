"""Alerts (issue 25): a failed factory run and a failed audit each reach a real HTTP receiver on 127.0.0.1 once,
through Apprise; the channel's URL (its token) stays out of every log line; a channel that refuses connections
costs one warning and nothing else; no channel configured = no alert."""
from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from flows import alerts
from flows.recipe import Recipe
from tests.fake_http import PostRecorder, refused_port
from tests.flows.test_factory import tiny_recipe

SECRET = "tok-5f3e9a1c7b2d"   # the part of a channel URL that must never be logged


def _alerting(recipe: dict, *names: str) -> dict:
    return Recipe.model_validate({**recipe, "alerts": {"channels_env": list(names)}}).model_dump(mode="json")


class _Records(logging.Handler):
    """Every record of the loggers that could print a channel URL (a handler of their own: Prefect's logging set-up
    replaces the root handlers, caplog's among them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def debug_logs():
    """rlt, apprise, urllib3 and prefect down to DEBUG (apprise and urllib3 print a URL's path at DEBUG)."""
    handler, saved = _Records(), []
    for name in ("rlt", "apprise", "urllib3", "prefect"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


def _no_secret(logs: _Records) -> None:
    assert logs.records, "the log handler saw nothing"
    assert SECRET not in logs.text, "a channel URL's token reached the log"


def _alert_warnings(logs: _Records) -> list[str]:
    return [m for m in logs.warnings() if "alert" in m]


def test_alerts_config_names_variables_not_urls_and_is_off_by_default():
    r = Recipe.model_validate({"name": "x"})
    assert r.alerts.channels_env == [] and not r.alerts.wants("run_failed")
    assert set(r.alerts.on) == {"run_failed", "audit_failed", "stale_release", "review_pending"}
    with pytest.raises(ValidationError, match="names of environment variables, not URLs"):
        alerts.AlertsConfig(channels_env=["json://127.0.0.1/hook"])
    with pytest.raises(ValidationError, match="not an environment variable name"):
        alerts.AlertsConfig(channels_env=["RLT ALERT"])
    with pytest.raises(ValidationError):
        alerts.AlertsConfig(on=["night_done"])
    with pytest.raises(ValidationError):
        alerts.AlertsConfig(channels=["X"])   # extra="forbid"
    assert alerts.scheme(f"slack://{SECRET}/C123") == "slack://" and alerts.scheme("garbage") == "?://"


def test_send_posts_once_and_a_refused_channel_is_one_warning(debug_logs, monkeypatch):
    cfg = alerts.AlertsConfig(channels_env=["RLT_TEST_ALERT_URL"])
    alert = alerts.Alert("run_failed", "rlt: x failed", "body")
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        assert alerts.send(cfg, alert) == 1
        assert alerts.send(cfg.model_copy(update={"on": ["audit_failed"]}), alert) == 0, "event not wanted"
        assert alerts.send(alerts.AlertsConfig(), alert) == 0, "no channel: no-op"
    assert [(p, b["title"], b["message"], b["type"]) for p, b in rec.posts] == \
        [(f"/hook/{SECRET}", "rlt: x failed", "body", "failure")]
    monkeypatch.setenv("RLT_TEST_ALERT_URL", f"json://127.0.0.1:{refused_port()}/hook/{SECRET}")
    debug_logs.clear()
    assert alerts.send(cfg, alert) == 0
    warnings = debug_logs.warnings()
    assert len(warnings) == 1 and "$RLT_TEST_ALERT_URL (json://)" in warnings[0], warnings
    monkeypatch.delenv("RLT_TEST_ALERT_URL")
    debug_logs.clear()
    assert alerts.send(cfg, alert) == 0
    assert "not set" in _alert_warnings(debug_logs)[0]
    _no_secret(debug_logs)


def test_failed_factory_night_sends_one_run_failed_naming_the_stage(tmp_path, tiny_model_dir, debug_logs,
                                                                    monkeypatch):
    """A real factory flow whose ingest fails (an empty source file): one POST naming the stage and the error;
    a second channel that refuses connections: one warning; the run fails with its own error, not the alert's."""
    from flows.factory import factory_flow

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = _alerting(tiny_recipe(tiny_model_dir, ingest={"source": {"uri": str(empty)}}),
                       "RLT_TEST_ALERT_URL", "RLT_TEST_ALERT_DEAD")
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        monkeypatch.setenv("RLT_TEST_ALERT_DEAD", f"json://127.0.0.1:{refused_port()}/x/{SECRET}")
        state = factory_flow(recipe=recipe, root=str(tmp_path / "data"), tracking=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="file is empty"):
        state.result()
    assert len(rec.posts) == 1, rec.posts
    body = rec.posts[0][1]
    assert body["title"] == "rlt: tiny-test failed at stage ingest" and body["type"] == "failure"
    assert "failed at stage ingest" in body["message"] and "file is empty" in body["message"]
    assert "run-" in body["message"] and "stage_runs" in body["message"]
    warned = _alert_warnings(debug_logs)
    assert len(warned) == 1 and "$RLT_TEST_ALERT_DEAD" in warned[0] and "run goes on" in warned[0], warned
    _no_secret(debug_logs)


def test_failed_audit_sends_one_audit_failed_and_no_run_failed(tmp_path, tiny_model_dir, debug_logs, monkeypatch):
    """The factory's audit step fails (audits faked: the real ones need a whole night, see the slow test below):
    exactly one alert, `audit_failed`, naming the audit, its figure and the report."""
    from data_contracts import ArtifactRef
    from flows import factory
    from flows.releases import audit, report

    ref = ArtifactRef(name="distill_set", uri=str(tmp_path / "d"), key="ab" * 8, schema_version="distill_set/v1",
                      producer="filter@1", config_hash="c")
    rep = ref.model_copy(update={"name": "report", "uri": str(tmp_path / "report")})
    failed = [{"name": "min_yield", "figure": 0.5, "bound": 0.99, "passed": False, "detail": ""},
              {"name": "max_reward_ks", "figure": 0.1, "bound": 1.0, "passed": True, "detail": "no baseline"}]

    def fail_audit(*a, **k):
        raise audit.AuditFailed("current", failed)

    monkeypatch.setattr(factory, "_run_nodes", lambda ctx, plans, where: {"distill_set": ref})
    monkeypatch.setattr(audit, "audit_and_publish", fail_audit)
    monkeypatch.setattr(report, "write_report", lambda *a, **k: rep)
    recipe = _alerting(tiny_recipe(tiny_model_dir), "RLT_TEST_ALERT_URL")
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        state = factory_flow_state(recipe, str(tmp_path / "data"))
    assert state.is_failed()
    assert len(rec.posts) == 1, rec.posts
    body = rec.posts[0][1]
    assert body["title"] == "rlt: tiny-test audit failed (min_yield)", body
    assert "min_yield: 0.5 vs bound 0.99" in body["message"] and "max_reward_ks" not in body["message"]
    assert f"{tmp_path / 'report'}/index.html" in body["message"] and "'current' not moved" in body["message"]
    _no_secret(debug_logs)


def factory_flow_state(recipe: dict, root: str):
    from flows.factory import factory_flow

    return factory_flow(recipe=recipe, root=root, tracking=False, return_state=True)


@pytest.mark.slow
def test_real_failed_audit_of_a_tiny_night_alerts_once(tmp_path, tiny_model_dir, monkeypatch):
    """The same without fakes: a whole tiny night whose min_yield bound cannot pass (minutes)."""
    recipe = tiny_recipe(tiny_model_dir)
    recipe = Recipe.model_validate({**recipe, "audits": {"min_yield": 0.99},
                                    "alerts": {"channels_env": ["RLT_TEST_ALERT_URL"]}}).model_dump(mode="json")
    with PostRecorder() as rec:
        monkeypatch.setenv("RLT_TEST_ALERT_URL", rec.url(f"hook/{SECRET}"))
        state = factory_flow_state(recipe, str(tmp_path / "data"))
    assert state.is_failed()
    assert [b["title"] for _, b in rec.posts] == ["rlt: tiny-test audit failed (min_yield)"]
    assert "index.html" in rec.posts[0][1]["message"]

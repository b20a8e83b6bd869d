"""This process's temporary Prefect server is its own (flows/ephemeral.py): the port race of several runs starting
at once, made to happen on purpose with a real Prefect temporary server."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.ephemeral import own_ephemeral_server
from tests.fake_http import send_json


@pytest.fixture
def other_process_server():
    """What another run's temporary server looks like from here: something on 127.0.0.1 answering /api/health."""
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            send_json(self, 200, True)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_a_port_taken_by_another_process_server_is_not_taken_for_ours(other_process_server, tmp_path, monkeypatch,
                                                                      caplog):
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    taken = other_process_server
    real_pick = SubprocessASGIServer.find_available_port
    picks = []

    def racing_pick(self):   # the first pick is the port the other process's server took after it looked free
        picks.append(taken if not picks else real_pick(self))
        return picks[-1]

    monkeypatch.setattr(SubprocessASGIServer, "find_available_port", racing_pick)
    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_HOME: str(tmp_path / "home")}), \
            caplog.at_level("WARNING", logger="rlt"):
        SubprocessASGIServer._instances.pop(None, None)
        try:
            port = own_ephemeral_server()
            server = SubprocessASGIServer()
            assert port == server.port and port != taken and picks[0] == taken and len(picks) == 2
            assert server.server_process is not None and server.server_process.poll() is None
            import httpx

            assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=30).status_code == 200
        finally:
            SubprocessASGIServer().stop()
    warned = [r.getMessage() for r in caplog.records if "temporary Prefect server" in r.getMessage()]
    assert len(warned) == 1 and f"port {taken} answered, but not from this process's server" in warned[0]


def test_nothing_is_started_when_a_server_is_configured():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert own_ephemeral_server() is None

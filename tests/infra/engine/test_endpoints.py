"""The vLLM endpoint pool: health checks against real local HTTP servers, spreading, cooldown revival, failover.

The servers here are tiny in-process ``http.server``s on free 127.0.0.1 ports (real sockets): one answers
``/health`` with 200, one with 503, and a closed port refuses connections. The failover tests add
``/v1/completions`` whose text is a pure function of (prompt, seed), as vLLM's is of (model, prompt, seed) on
servers running the same model: a protocol stand-in, not a vLLM substitute (the real engine is exercised in
tests/infra/devstack/test_vllm_server.py, marked vllm).
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
import types
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.engine.endpoints import EndpointPool, NoHealthyEndpoint, pool_for, probe, serve
from infra.engine.runner import run_stage
from rlt_core.generation import EndpointUnavailable, GenerationError, GenRequest, SamplingConfig, VLLMServerGenerator
from tasks import generate
from tests.fake_http import send_json
from tests.tasks.helpers import setup


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.probes += 1
        if srv.dead:
            return self._drop()
        if self.path != "/health":
            return self._send(404, {"error": "not found"})
        self._send(srv.health, {})

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            n = srv.completions = srv.completions + 1
            if srv.die_after is not None and n > srv.die_after and not srv.dead:
                srv.dead = True   # from now on: drop what is in flight, refuse new connections
                threading.Thread(target=srv.close, daemon=True).start()
            status, drop = srv.status, srv.dead
        if drop:
            return self._drop()
        if status != 200:
            return self._send(status, {"error": {"message": f"injected {status}"}})
        time.sleep(srv.delay_s)
        text = f"{hashlib.sha256(body['prompt'].encode()).hexdigest()[:8]} seed={body['seed']}"
        with srv.lock:
            srv.served.append(self.headers["X-Request-Id"])
        self._send(200, {"choices": [{"text": text, "finish_reason": "length"}],
                         "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}})

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, code, obj):
        send_json(self, code, obj)


class FakeServer(ThreadingHTTPServer):
    """/health answers ``health``; /v1/completions answers ``status`` (200: a text from prompt and seed), and after
    ``die_after`` completions the server dies: in-flight requests are dropped and the port is closed."""

    daemon_threads = True

    def __init__(self, health: int = 200, die_after: int | None = None, delay_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.health, self.status, self.die_after, self.delay_s = health, 200, die_after, delay_s
        self.dead, self.probes, self.completions, self.served = False, 0, 0, []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:   # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def servers():
    made: list[FakeServer] = []

    def make(**kw) -> FakeServer:
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for s in made:
        if not s.dead:
            s.close()


class Clock:
    """``time.monotonic`` of infra/engine/endpoints.py, moved by the test: cooldowns and rechecks end when the test says,
    not when a loaded machine happens to get there (a fixed sleep made "still cooling down" a race)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    from infra.engine import endpoints

    c = Clock()
    monkeypatch.setattr(endpoints, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


# ---------------------------------------------------------------------------------------------------- the pool


def test_probe_reports_what_is_wrong(servers):
    ok, sick, closed = servers(), servers(health=503), closed_port_url()
    assert probe(ok.url) is None
    assert probe(sick.url) == "GET /health: HTTP 503"
    assert probe(closed).startswith("GET /health: ConnectError")


def test_healthy_lists_those_that_answer_and_pick_spreads_over_them(servers):
    ok1, sick, ok2, closed = servers(), servers(health=503), servers(), closed_port_url()
    pool = EndpointPool([ok1.url, sick.url, ok2.url, closed + "/"])
    assert pool.healthy() == [ok1.url, ok2.url]
    picks = {i: pool.pick(i) for i in range(8)}
    # a shard whose own endpoint is healthy stays there; the others' shards alternate over the healthy ones
    assert [picks[i] for i in (0, 4, 2, 6)] == [ok1.url, ok1.url, ok2.url, ok2.url]
    assert [picks[i] for i in (1, 5)] == [ok1.url, ok2.url]   # the 503 endpoint's shards
    assert [picks[i] for i in (3, 7)] == [ok1.url, ok2.url]   # the closed port's shards
    assert Counter(picks.values()) == {ok1.url: 4, ok2.url: 4}
    assert pool.pick(0, exclude=[ok1.url]) == ok2.url


def test_probes_are_cached_until_due(servers):
    ok = servers()
    pool = EndpointPool([ok.url], recheck_s=60)
    for i in range(5):
        pool.pick(i)
    assert ok.probes == 1   # one probe serves every shard until recheck_s


def test_mark_dead_then_revival_after_cooldown(servers, clock, caplog):
    a, b = servers(), servers()
    pool = EndpointPool([a.url, b.url], cooldown_s=0.5, recheck_s=60)
    assert pool.healthy() == [a.url, b.url]
    with caplog.at_level(logging.INFO, logger="rlt"):
        pool.mark_dead(a.url, "ConnectError: refused")
        probes = a.probes
        clock.advance(0.25)
        assert pool.healthy() == [b.url] and pool.pick(0) == b.url
        assert a.probes == probes   # not probed during its cooldown
        clock.advance(0.25)   # (binary fractions: the sums are exact)
        assert pool.healthy() == [a.url, b.url] and pool.pick(0) == a.url
    msgs = [r.getMessage() for r in caplog.records if r.name == "rlt"]
    assert any(f"{a.url} marked dead" in m and "ConnectError: refused" in m for m in msgs), msgs
    assert any(f"{a.url} is alive again" in m for m in msgs), msgs


def test_sick_endpoint_comes_back_when_it_answers(servers, clock):
    ok, sick = servers(), servers(health=503)
    pool = EndpointPool([ok.url, sick.url], cooldown_s=0.5, recheck_s=60)
    assert pool.healthy() == [ok.url]
    sick.health = 200
    clock.advance(0.25)
    assert pool.healthy() == [ok.url]   # still cooling down
    clock.advance(0.25)
    assert pool.healthy() == [ok.url, sick.url]


def test_endpoint_that_goes_away_is_found_at_its_next_check(servers, clock):
    a, b = servers(), servers()
    pool = EndpointPool([a.url, b.url], recheck_s=0.5)
    assert pool.pick(1) == b.url
    b.close()
    b.dead = True
    clock.advance(0.25)
    assert pool.pick(1) == b.url   # its good probe still counts
    clock.advance(0.25)
    assert pool.pick(1) == a.url


def test_all_dead_is_a_clear_error_naming_every_endpoint(servers):
    sick, closed = servers(health=503), closed_port_url()
    pool = EndpointPool([sick.url, closed], cooldown_s=60)
    with pytest.raises(NoHealthyEndpoint) as err:
        pool.pick(0)
    text = str(err.value)
    assert f"{sick.url}: GET /health: HTTP 503" in text and f"{closed}: GET /health: ConnectError" in text
    before = sick.probes
    with pytest.raises(NoHealthyEndpoint):
        pool.pick(0)
    assert sick.probes == before + 1   # with nothing healthy, every endpoint is probed once more (no cooldown)


def test_pool_for_shares_one_pool_per_list():
    urls = [closed_port_url(), closed_port_url() + "1"]
    assert pool_for(urls) is pool_for([u + "/" for u in urls])
    assert pool_for(urls) is not pool_for(urls[:1])
    with pytest.raises(ValueError, match="duplicate"):
        EndpointPool([urls[0], urls[0] + "/"])


# ---------------------------------------------------------------------------------------------------- failover


def _reqs(n: int) -> list[GenRequest]:
    return [GenRequest(f"r{i}", f"prompt {i}", i) for i in range(n)]


def test_serve_moves_only_the_unserved_requests_to_another_endpoint(servers, caplog):
    dies, ok = servers(die_after=3, delay_s=0.02), servers()
    pool = EndpointPool([dies.url, ok.url])
    written: list[str] = []
    gens = {u: VLLMServerGenerator(u, "m", max_concurrency=2, backoff_s=0.01, connect_retries=1)
            for u in pool.urls}
    with caplog.at_level(logging.INFO, logger="rlt"):
        served = serve(pool, 0, _reqs(10), lambda u, todo: gens[u].stream(todo, SamplingConfig(max_new_tokens=4)),
                       lambda chunk: written.extend(r.request_id for r in chunk), part_size=2)
    assert sorted(written) == sorted(f"r{i}" for i in range(10))   # every request once: none lost, none twice
    n_dead = served[dies.url]   # 2 or 3: a reply still in flight when the failure surfaced is not waited for
    assert 2 <= n_dead <= 3 and served[ok.url] == 10 - n_dead
    assert set(written[:n_dead]) <= set(dies.served)   # the first parts came from the endpoint that then died...
    assert sorted(ok.served) == sorted(written[n_dead:])   # ...and only the rest went to the live one
    assert pool.healthy() == [ok.url]
    assert any(f"{dies.url} marked dead" in r.getMessage() for r in caplog.records)


def test_serve_does_not_fail_over_a_bad_request(servers):
    bad, ok = servers(), servers()
    bad.status = 400   # the request's fault: another server would reject it too
    pool = EndpointPool([bad.url, ok.url])
    gen = VLLMServerGenerator(bad.url, "m", backoff_s=0.01)
    with pytest.raises(GenerationError, match="HTTP 400"):
        serve(pool, 0, _reqs(2), lambda u, todo: gen.stream(todo, SamplingConfig()), lambda chunk: None, 2)
    assert pool.healthy() == [bad.url, ok.url] and ok.completions == 0


def test_serve_fails_over_repeated_5xx_and_names_every_endpoint_when_all_fail(servers):
    a, b = servers(), servers()
    a.status = b.status = 503   # healthy by /health, but every completion fails through the client's retries
    pool = EndpointPool([a.url, b.url])
    gens = {u: VLLMServerGenerator(u, "m", max_retries=1, backoff_s=0.01) for u in pool.urls}
    with pytest.raises(NoHealthyEndpoint) as err:
        serve(pool, 0, _reqs(3), lambda u, todo: gens[u].stream(todo, SamplingConfig()), lambda chunk: None, 2)
    text = str(err.value)
    assert text.count("HTTP 503: injected 503") == 2 and a.url in text and b.url in text
    assert "3 of 3 requests of this shard not served" in text


def test_client_gives_up_on_connection_errors_after_connect_retries(monkeypatch):
    from rlt_core import generation

    waits: list[float] = []   # the backoffs themselves, rather than a wall time a loaded machine may exceed
    monkeypatch.setattr(generation, "time", types.SimpleNamespace(perf_counter=time.perf_counter,
                                                                  sleep=waits.append))
    gen = VLLMServerGenerator(closed_port_url(), "m", max_retries=4, backoff_s=0.2, connect_retries=1)
    with pytest.raises(EndpointUnavailable, match=r"failed after 2 attempts; last error: ConnectError"):
        gen.generate([GenRequest("r", "p", 1)], SamplingConfig())
    assert waits == [0.2]   # one backoff, not four (0.2 + 0.4 + 0.8 + 1.6 s)


# ---------------------------------------------------------------------------------------------------- the stage

GEN = dict(backend="vllm_server", served_model_name="m", num_samples=2, sampling={"max_new_tokens": 8},
           shard_size=2, part_size=1, concurrency=2)


def _rows(ctx, ref) -> list[dict]:
    return ctx.catalog.sql(f"SELECT explanation_id, problem_id, sample_index, completion, seed, backend "
                           f"FROM data_explanations WHERE artifact_key = '{ref.key}' "
                           "ORDER BY explanation_id").to_pylist()


def test_stage_fails_over_a_dead_and_a_dying_endpoint(tmp_path, tiny_model_dir, servers, caplog):
    ref_srv = servers()
    ctx0, problems0, teacher0 = setup(str(tmp_path / "ref"), tiny_model_dir, n=10)
    ref = run_stage(generate.STAGE, ctx0, generate.GenerateConfig(**GEN, endpoints=[ref_srv.url]), problems0, teacher0)

    live, dying, dead = servers(delay_s=0.02), servers(die_after=3, delay_s=0.02), closed_port_url()
    ctx, problems, teacher = setup(str(tmp_path / "pool"), tiny_model_dir, n=10)
    with caplog.at_level(logging.INFO, logger="rlt"):
        out = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**GEN, endpoints=[dead, live.url, dying.url]), problems,
                           teacher)
    assert out.key == ref.key
    rows = _rows(ctx, out)
    assert rows == _rows(ctx0, ref) and len(rows) == len({r["explanation_id"] for r in rows}) == ref.num_rows > 0
    assert dying.dead and 0 < len(dying.served) <= 3 < ref.num_rows
    assert len(live.served) + len(dying.served) == len(rows)   # nothing served twice
    msgs = [r.getMessage() for r in caplog.records if r.name == "rlt"]
    assert any(f"{dead} marked dead" in m for m in msgs) and any(f"{dying.url} marked dead" in m for m in msgs)
    counts = [m for m in msgs if "request(s) by endpoint" in m]
    assert counts and any(dying.url in m for m in counts)


def test_endpoints_advertised_in_a_ray_node_table():
    from infra.engine.endpoints import endpoints_from_nodes

    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 8, "GPU": 2,
                                                                            "vllm_endpoint_8000": 1,
                                                                            "vllm_endpoint_8001": 1}},
             {"Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"vllm_endpoint_8000": 1}},
             {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 0, "node_a": 1,
                                                                            "vllm_endpoint_x": 1}}]
    assert endpoints_from_nodes(nodes) == ["http://10.0.0.2:8000", "http://10.0.0.2:8001"]

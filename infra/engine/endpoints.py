"""A pool of vLLM endpoints (one OpenAI-compatible server per GPU or node): health checks, spreading, failover.

``generate`` (backend ``vllm_server``) spreads its shards over ``endpoints``; each shard generates through the
pool: it starts on the endpoint its index assigns (if that one answers its health check), and when the endpoint
dies mid-shard (the client raised ``EndpointUnavailable`` after its own retries, or any other error while the
endpoint fails its health check) the pool marks it dead and the shard's *remaining* requests go to another healthy
endpoint; what the shard already received is kept (``serve``).

Health = ``GET <base>/health`` answering 200 within ``health_timeout_s`` (vLLM's OpenAI server answers 200 once its
engine is up, 5xx once the engine died; ``infra.devstack.vllm_server.VLLMServer`` waits on the same route). A dead
endpoint is probed again once ``cooldown_s`` has passed and comes back when it answers.

No coordinator: the state is per process (``pool_for`` gives every shard of one process the same pool for one
endpoint list) and cheap to rebuild, so shards running on Ray workers each find out for themselves. Two processes
may disagree for up to ``cooldown_s`` about an endpoint; each one's own failures keep it correct.

Failover keeps the data identical only if every endpoint serves the same model (same weights, dtype and vLLM
build): a request's text is a function of (model, prompt, seed, sampling), not of the server that ran it.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlt_core.generation import EndpointUnavailable, GenerationError, GenRequest, GenResult

if TYPE_CHECKING:
    from infra.engine.context import RunContext

log = logging.getLogger("rlt")

HEALTH_TIMEOUT_S = 2.0
COOLDOWN_S = 30.0
RECHECK_S = 5.0


RAY_RESOURCE = re.compile(r"^vllm_endpoint_(\d{1,5})$")


def endpoints_from_nodes(nodes: Iterable[dict[str, Any]]) -> list[str]:
    """The vLLM servers a Ray node table advertises: a live node holding the custom resource
    ``vllm_endpoint_<port>`` (``ray start --resources '{"vllm_endpoint_8000": 1}'``, one per server it runs)
    serves ``http://<node address>:<port>``. Sorted, so every reader spreads shards the same way."""
    urls = set()
    for node in nodes:
        if not node.get("Alive"):
            continue
        for name in node.get("Resources", {}):
            m = RAY_RESOURCE.match(name)
            if m:
                urls.add(f"http://{node['NodeManagerAddress']}:{int(m.group(1))}")
    return sorted(urls)


def discover(ctx: RunContext) -> list[str]:
    """``generate.endpoints: [ray]``: the endpoints the run's Ray cluster advertises (executor.kind must be ray)."""
    from infra.engine.executor import cluster_nodes

    nodes = cluster_nodes(ctx)
    urls = endpoints_from_nodes(nodes)
    if not urls:
        raise NoHealthyEndpoint("generate.endpoints [ray]: none of the cluster's "
                                f"{sum(bool(n.get('Alive')) for n in nodes)} "
                                "live node(s) advertises a vLLM server; start each node with a resource "
                                "vllm_endpoint_<port> per server it runs (ray start --resources "
                                "'{\"vllm_endpoint_8000\": 1}') or list the endpoints in the recipe")
    log.info("generate: %d vLLM endpoint(s) advertised by the Ray cluster: %s", len(urls), urls)
    return urls


class NoHealthyEndpoint(RuntimeError):
    """Every endpoint of a pool failed (its message names each one and its last failure)."""


@dataclass
class _State:
    url: str
    alive: bool | None = None   # None: never probed
    checked_at: float = float("-inf")   # time.monotonic() of the last probe or failure
    last_error: str = ""
    probe_lock: threading.Lock = field(default_factory=threading.Lock)


def probe(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> str | None:
    """``GET <url>/health``: None when it answers 200 within ``timeout_s``, else what went wrong."""
    import httpx

    try:
        resp = httpx.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"GET /health: {type(exc).__name__}: {exc}"
    return None if resp.status_code == 200 else f"GET /health: HTTP {resp.status_code}"


class EndpointPool:
    """The endpoints of one list, with what this process knows of their health.

    Args:
        urls: base URLs (``http://host:port``), in the order shards are assigned to them.
        health_timeout_s: how long a health probe may take.
        cooldown_s: a dead endpoint is probed again only after this long.
        recheck_s: a live endpoint's last good probe counts for this long before ``pick`` probes it again.
    """

    def __init__(self, urls: Sequence[str], health_timeout_s: float = HEALTH_TIMEOUT_S,
                 cooldown_s: float = COOLDOWN_S, recheck_s: float = RECHECK_S):
        self.urls = [u.rstrip("/") for u in urls]
        if not self.urls:
            raise ValueError("an endpoint pool needs at least one URL")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"duplicate endpoints in {self.urls}")
        self.health_timeout_s, self.cooldown_s, self.recheck_s = health_timeout_s, cooldown_s, recheck_s
        self._lock = threading.Lock()
        self._states = {u: _State(u) for u in self.urls}

    def __repr__(self) -> str:
        return f"EndpointPool({self.urls})"

    def healthy(self, force: bool = False) -> list[str]:
        """The endpoints that answer now, in pool order; probes those whose state is due (never probed, a stale
        good probe, a dead one past its cooldown), or all of them with ``force``."""
        for url in self.urls:
            self._refresh(url, force)
        with self._lock:
            return [u for u in self.urls if self._states[u].alive]

    def pick(self, i: int, exclude: Iterable[str] = ()) -> str:
        """A healthy endpoint for shard ``i``: its own ``urls[i % n]`` when healthy, else one of the healthy ones
        in turn (``i // n``), so a dead endpoint's shards spread over all the others. ``exclude``: endpoints not to
        use (ones that already failed this shard). When none is left, every endpoint is probed once more before
        ``NoHealthyEndpoint`` is raised."""
        skip = {u.rstrip("/") for u in exclude}
        for force in (False, True):
            ok = [u for u in self.healthy(force) if u not in skip]
            if ok:
                own = self.urls[i % len(self.urls)]
                return own if own in ok else ok[(i // len(self.urls)) % len(ok)]
        raise NoHealthyEndpoint(self.describe("no healthy vLLM endpoint", skip))

    def mark_dead(self, url: str, reason: str) -> None:
        """Take ``url`` out of rotation until it answers a probe after ``cooldown_s``."""
        st = self._states[url.rstrip("/")]
        with self._lock:
            was_alive = st.alive is not False
            st.alive, st.checked_at, st.last_error = False, time.monotonic(), reason
        if was_alive:
            log.warning("vLLM endpoint %s marked dead for %.0fs: %s", st.url, self.cooldown_s, reason)

    def describe(self, what: str, failed_here: Iterable[str] = ()) -> str:
        """``what`` followed by every endpoint and its last failure."""
        failed_here = set(failed_here)
        with self._lock:
            lines = [f"  {s.url}: " + (s.last_error or ("up" if s.alive else "not probed"))
                     + (" (failed this shard)" if s.url in failed_here and s.alive else "")
                     for s in self._states.values()]
        return f"{what} among {len(self.urls)}:\n" + "\n".join(lines)

    def _due(self, st: _State, now: float) -> bool:
        if st.alive is None:
            return True
        return now - st.checked_at >= (self.recheck_s if st.alive else self.cooldown_s)

    def _refresh(self, url: str, force: bool) -> None:
        st = self._states[url]
        with st.probe_lock:   # concurrent shards wait for one probe instead of each sending theirs
            with self._lock:
                due, started = force or self._due(st, time.monotonic()), time.monotonic()
            if not due:
                return
            error = probe(url, self.health_timeout_s)
            with self._lock:
                if st.checked_at > started:   # marked dead while the probe ran: that fresher verdict stands
                    return
                was = st.alive
                st.alive, st.checked_at = error is None, time.monotonic()
                st.last_error = error or st.last_error
        if error is None and was is False:
            log.info("vLLM endpoint %s is alive again", url)
        elif error is not None and was is not False:
            log.warning("vLLM endpoint %s marked dead for %.0fs: %s", url, self.cooldown_s, error)


_POOLS: dict[tuple[tuple[str, ...], tuple[tuple[str, float], ...]], EndpointPool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(urls: Sequence[str], **kwargs: float) -> EndpointPool:
    """This process's pool for an endpoint list (one per list and settings, shared by every shard here)."""
    key = (tuple(u.rstrip("/") for u in urls), tuple(sorted(kwargs.items())))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = EndpointPool(urls, **kwargs)
        return _POOLS[key]


# ---------------------------------------------------------------------------------------------------------------
# one shard's requests through a pool
# ---------------------------------------------------------------------------------------------------------------

StreamFn = Callable[[str, list[GenRequest]], Iterator[GenResult]]


def endpoint_failure(pool: EndpointPool, url: str, exc: Exception) -> str | None:
    """Why ``exc`` is ``url``'s fault (then the requests may go elsewhere), or None if it is the request's."""
    if isinstance(exc, EndpointUnavailable):
        return str(exc)
    if isinstance(exc, GenerationError):   # e.g. no reply in time: the endpoint's fault only if it is down
        down = probe(url, pool.health_timeout_s)
        return f"{exc}; and {down}" if down else None
    return None


def serve(pool: EndpointPool, shard_index: int, requests: Sequence[GenRequest], stream: StreamFn,
          sink: Callable[[list[GenResult]], None], part_size: int) -> Counter[str]:
    """Run ``requests`` on ``pool`` and hand the results to ``sink`` in lists of at most ``part_size``.

    Starts on ``pool.pick(shard_index)``; when that endpoint fails (``endpoint_failure``) it is marked dead, the
    results already received are still handed over, and only the requests not yet received are sent to the next
    healthy endpoint this shard has not tried. Any other error (the request's own, or ``sink``'s) propagates.
    Returns how many requests each endpoint served.
    """
    todo = {r.request_id: r for r in requests}
    served: Counter[str] = Counter()
    failed: list[str] = []
    while todo:
        try:
            url = pool.pick(shard_index, exclude=failed)
        except NoHealthyEndpoint as exc:
            raise NoHealthyEndpoint(f"{exc}\n{len(todo)} of {len(requests)} requests of this shard not served") \
                from None
        error = _drain(stream(url, list(todo.values())), todo, served, url, sink, part_size)
        if error is None:
            if todo:   # a stream must yield every request it was given, or raise
                raise GenerationError(f"{url} returned no result for {len(todo)} request(s), e.g. {next(iter(todo))!r}")
            break
        why = endpoint_failure(pool, url, error)
        if why is None:
            raise error
        pool.mark_dead(url, why)
        failed.append(url)
        log.warning("vLLM endpoint %s failed with %d request(s) of this shard left; moving them on", url, len(todo))
    return served


def _drain(results: Iterator[GenResult], todo: dict[str, GenRequest], served: Counter[str], url: str,
           sink: Callable[[list[GenResult]], None], part_size: int) -> Exception | None:
    """Hand ``results`` to ``sink`` in parts until they end (None) or the stream fails (its error, returned after
    what was received before it went to ``sink``). Errors of ``sink`` propagate."""
    buf: list[GenResult] = []

    def flush() -> None:
        if buf:
            sink(list(buf))
            for r in buf:
                todo.pop(r.request_id)
            served[url] += len(buf)
            buf.clear()

    try:
        while True:
            try:
                res = next(results)
            except StopIteration:
                flush()
                return None
            except Exception as exc:   # noqa: BLE001 - classified by the caller
                flush()
                return exc
            buf.append(res)
            if len(buf) >= part_size:
                flush()
    finally:
        close = getattr(results, "close", None)
        if close is not None:   # cancels what this endpoint has not started (VLLMServerGenerator.stream)
            close()


def describe_counts(served: Counter[str]) -> str:
    """``url: n, url: n`` in descending order (for a shard's log line)."""
    return ", ".join(f"{u}: {n}" for u, n in served.most_common()) or "none"


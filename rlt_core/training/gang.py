"""The local launcher of a training gang: ``torch.distributed.run`` under a supervisor, failures as one line.

    result = launch_local(job, ranks=2)          # -> the job's result.json; raises GangFailed

:func:`launch_local` (the owner's process) starts ``python -m rlt_core.training.launch --supervise JOB`` in a new
session (its own process group); the supervisor runs torchrun in-process (``--standalone``, no restarts, the job's
monitor interval and shutdown timeout), and each rank runs ``python -m rlt_core.training.launch JOB``
(:func:`rlt_core.training.launch.run_rank`). When a rank fails, torchrun stops the others (SIGTERM, then SIGKILL
after the shutdown timeout) and raises ``ChildFailedError``; the supervisor picks the root cause
(:func:`describe_failures`) and writes it to a file the owner reads. One rank runs as a plain process: the
single-process path, with no process group and no DDP wrapper.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Optional

from data_contracts.errors import ExpectedError

if TYPE_CHECKING:
    from rlt_core.training.job import TrainJob

RESULT_FILE = "result.json"
JOB_FILE = "job.json"
_GANG_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE")


class GangFailed(ExpectedError, RuntimeError):
    """A training gang failed; ``str(err)`` is one line naming the failed rank, its host and how it ended.

    Attributes: ``rank``, ``host``, ``exitcode`` (negative: killed by a signal), ``signal`` (e.g. "SIGKILL"),
    ``elapsed_s`` (launch to the end of the whole gang), ``log_path`` (the gang's combined output).
    """

    def __init__(self, message: str, *, rank: Optional[int] = None, host: Optional[str] = None,
                 exitcode: Optional[int] = None, signal: Optional[str] = None, elapsed_s: float = 0.0,
                 log_path: Optional[str] = None):
        super().__init__(" ".join(message.split()))
        self.rank, self.host, self.exitcode, self.signal = rank, host, exitcode, signal
        self.elapsed_s, self.log_path = elapsed_s, log_path


def launch_local(job: "TrainJob", ranks: Optional[int] = None, *, timeout_s: Optional[float] = None,
                 log_path: Optional[str] = None, env: Optional[dict[str, str]] = None,
                 python: Optional[str] = None) -> dict:
    """Train ``job`` with ``ranks`` processes on this host (``torch.distributed.run --standalone``); return the
    job's result (``output_dir/result.json``).

    The gang runs in its own process group under a supervisor; it is stopped (SIGTERM, then SIGKILL) when this call
    times out or is interrupted. The global batch is checked first: a recipe that cannot keep it on ``ranks`` ranks
    raises ValueError before anything starts.

    Args:
        job: the spec; ``ranks`` overrides ``job.launch.ranks``.
        timeout_s: wall-clock bound on the whole gang (None: none).
        log_path: where the ranks' output goes (default ``output_dir/launch.log``, appended).
        env: extra environment for the ranks (``OMP_NUM_THREADS`` is set from ``threads_per_rank``).
        python: the interpreter (default this one).
    Raises:
        GangFailed: a rank failed, or the gang timed out; one line naming the rank, host and signal/exit code.
    """
    if ranks is not None:
        job = job.model_copy(update={"launch": job.launch.model_copy(update={"ranks": ranks})})
    job.batch_plans()
    os.makedirs(job.output_dir, exist_ok=True)
    job_path = os.path.join(job.output_dir, JOB_FILE)
    write_json(job_path, job.model_dump(mode="json"))
    log_path = log_path or os.path.join(job.output_dir, "launch.log")
    fd, failure_file = tempfile.mkstemp(prefix="rlt-gang-", suffix=".json")
    os.close(fd)
    os.remove(failure_file)
    child_env = dict(os.environ, **(env or {}))
    if job.launch.threads_per_rank:
        child_env["OMP_NUM_THREADS"] = str(job.launch.threads_per_rank)
    cmd = [python or sys.executable, "-m", "rlt_core.training.launch", "--supervise", job_path,
           "--failure-file", failure_file]
    t0 = time.monotonic()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc, job.launch.shutdown_timeout_s)
            raise GangFailed(f"training gang timed out after {timeout_s:.0f} s and was stopped "
                             f"({job.launch.ranks} ranks on {socket.gethostname()}); log: {log_path}",
                             host=socket.gethostname(), elapsed_s=time.monotonic() - t0, log_path=log_path) from None
        finally:
            if proc.poll() is None:   # interrupted (KeyboardInterrupt, cancellation): take the gang down with us
                _stop_group(proc, job.launch.shutdown_timeout_s)
    elapsed = time.monotonic() - t0
    if rc != 0:
        raise _failure(failure_file, rc, elapsed, log_path)
    with open(os.path.join(job.output_dir, RESULT_FILE), encoding="utf-8") as f:
        return json.load(f)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """Stop the supervisor and its ranks: SIGTERM to the supervisor's process group (torchrun forwards it and stops
    its ranks, which run in sessions of their own), then SIGKILL to whatever outlived the grace period, by pid."""
    try:
        import psutil

        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except Exception:   # noqa: BLE001 - already gone, or no psutil: the group signal is all we can do
        family = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s + 5)
    except subprocess.TimeoutExpired:
        pass
    for member in family:
        try:
            if member.is_running():
                member.kill()
        except Exception:   # noqa: BLE001 - exited meanwhile
            continue
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _failure(failure_file: str, rc: int, elapsed: float, log_path: str) -> GangFailed:
    try:
        with open(failure_file, encoding="utf-8") as f:
            info = json.load(f)
        os.remove(failure_file)
    except (OSError, ValueError):
        tail = _last_line(log_path)
        return GangFailed(f"training gang supervisor exited with code {rc} (no rank failure recorded): {tail}; "
                          f"log: {log_path}", exitcode=rc, host=socket.gethostname(), elapsed_s=elapsed,
                          log_path=log_path)
    return GangFailed(info["message"] + f" (after {elapsed:.1f} s; log: {log_path})", rank=info["rank"],
                      host=info["host"], exitcode=info["exitcode"], signal=info["signal"], elapsed_s=elapsed,
                      log_path=log_path)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""
    except OSError:
        return ""


# Errors a rank raises because another one died: not the root cause when a peer was killed or failed first.
_PEER_ERROR = re.compile(r"closed by peer|reset by peer|Broken pipe|timed out|timeout|DistBackendError|"
                         r"NCCL communicator|Connection refused", re.IGNORECASE)


def describe_failures(failures: dict[int, Any], host: str) -> dict:
    """The root cause among torchrun's failed ranks (``ChildFailedError.failures``: rank -> ``ProcessFailure``),
    as ``{"rank", "host", "exitcode", "signal", "message"}`` with a one-line message.

    torchrun picks the earliest failure by timestamp (one-second resolution); here a rank ended by a signal other
    than the SIGTERM torchrun itself sends wins, then a rank whose error is not a peer's disconnect or timeout,
    then the earliest."""
    def rank_of(item):
        rank, f = item
        sig = f.signal_name() if f.exitcode < 0 else None
        return (sig in (None, "SIGTERM"), sig == "SIGTERM" or bool(_PEER_ERROR.search(str(f.message or ""))),
                f.timestamp, rank)

    rank, f = min(failures.items(), key=rank_of)
    sig = f.signal_name() if f.exitcode < 0 else None
    if sig is not None:
        how = f"was killed by {sig}"
    else:
        lines = [ln.strip() for ln in str(f.message or "").splitlines() if ln.strip()]
        how = f"exited with code {f.exitcode}" + (f": {lines[-1][:300]}" if lines else "")
    others = len(failures) - 1
    message = (f"training gang failed: rank {rank} on host {host} (local rank {f.local_rank}, pid {f.pid}) {how}"
               + (f"; {others} other rank(s) stopped" if others else ""))
    return {"rank": rank, "host": host, "exitcode": f.exitcode, "signal": sig, "message": message}


def supervise(job_path: str, failure_file: str) -> int:
    """Run torchrun for the job in this process; on a failed rank write :func:`describe_failures` to
    ``failure_file`` and return 1. One rank runs as a plain process (the single-process path: no process group,
    no DDP wrapper), described the same way when it fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from torch.distributed.run import parse_args, run

    from rlt_core.training.job import TrainJob

    with open(job_path, encoding="utf-8") as f:
        job = TrainJob.model_validate_json(f.read())
    la = job.launch
    if la.ranks == 1:
        error_file = failure_file + ".rank0"
        env = {k: v for k, v in os.environ.items() if k not in _GANG_ENV}
        env["TORCHELASTIC_ERROR_FILE"] = error_file   # where @record puts a Python error
        proc = subprocess.Popen([sys.executable, "-m", "rlt_core.training.launch", job_path], env=env)
        if proc.wait() == 0:
            return 0
        failure = ProcessFailure(local_rank=0, pid=proc.pid, exitcode=proc.returncode,
                                 error_file=error_file if os.path.exists(error_file) else "<N/A>")
        remove_file(error_file)
        info = describe_failures({0: failure}, socket.gethostname())
        write_json(failure_file, info)
        print(info["message"], file=sys.stderr, flush=True)
        return 1
    argv = ["--standalone", "--nproc-per-node", str(la.ranks), "--max-restarts", "0",
            "--monitor-interval", str(la.monitor_interval_s), "--shutdown-timeout", str(int(la.shutdown_timeout_s)),
            "-m", "rlt_core.training.launch", job_path]
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        info = describe_failures(err.failures, socket.gethostname())
        write_json(failure_file, info)
        print(info["message"], file=sys.stderr, flush=True)
        return 1
    return 0


def write_json(path: str, obj: Any) -> None:
    """``obj`` as JSON at ``path``, written aside and renamed (readers never see half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


__all__ = ["GangFailed", "describe_failures", "launch_local", "remove_file", "supervise", "write_json"]

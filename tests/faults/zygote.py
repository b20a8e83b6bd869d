"""A pre-imported ``rlt`` for the kill trials: one interpreter imports the factory once, then forks a fresh
child per command, and each child runs exactly ``flows.cli.main(argv)``.

A kill trial is two CLI runs (the one that gets SIGKILLed, the rerun); importing torch, transformers, Prefect,
DuckDB and MLflow anew costs about 8 s of each on two cores, more than the tiny stages themselves. A forked
child is a real, separate process: it is killed by a real SIGKILL, holds its own locks and connections, and
the kernel cleans up after it exactly as after any other process. The parent never runs a torch op or starts
a thread, so nothing is forked mid-operation (checked before every fork).

Protocol (JSON lines): stdin ``{"argv": [...], "env": {...}, "log": "/path"}``; stdout ``{"pid": int}`` once
the child runs, then ``{"rc": int, "seconds": float}``; rc is ``-signal`` when the child died of a signal.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time


def _preload() -> None:
    import prefect  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import flows.cli  # noqa: F401
    import flows.factory  # noqa: F401
    import flows.pipeline  # noqa: F401
    import infra.catalog.lake  # noqa: F401
    import infra.tracking  # noqa: F401
    import tasks.distill  # noqa: F401
    import tasks.filter  # noqa: F401
    import tasks.generate  # noqa: F401
    import tasks.score  # noqa: F401


def _child(cmd: dict) -> None:
    os.environ.update(cmd.get("env") or {})
    fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    rc = 1
    try:
        from flows.cli import main

        rc = int(main(list(cmd["argv"])) or 0)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    _preload()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        live = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if live:
            raise RuntimeError(f"zygote: threads running before fork: {live}")
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            _child(cmd)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"rc": rc, "seconds": round(time.time() - t0, 2)}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()

"""Crash points for the reliability suite (tests/faults): a real SIGKILL at a chosen place in a real run.

Named points sit where a crash would hurt: after each file a stage writes, before and inside the catalog's
commit transaction, between a commit and the stage's bookkeeping. Two environment variables, read at each pass
(unset, a point costs one dict lookup):

- ``RLT_FAULT_TRACE=FILE``: append ``<point>@<n>`` (the n-th pass of that point in this process) to FILE;
  a reference run lists every place a later run can be killed.
- ``RLT_FAULT_KILL=<point>@<n>``: at the n-th pass of ``<point>`` the process sends itself SIGKILL: no
  handler, no ``finally``, no flush, exactly as the kernel's OOM killer or a lost machine would end it.
- ``RLT_FAULT_PAUSE=<point>@<n>:<path>``: at the n-th pass the process creates ``<path>.reached`` and waits
  (up to 10 minutes) until ``<path>.go`` exists, so a test can break something outside at exactly that
  moment (stop the object store mid-commit) and let the run go on into the outage. ``$VARS`` in ``<path>`` are
  expanded in the passing process (``pause-$RLT_RAY_NODE``: one path per Ray node, so a test can let one node
  run and park another).

The suite picks kill points from a trace with a seeded random generator, so every failure is reproducible
from its seed. Nothing here runs unless one of the variables is set.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

TRACE_ENV = "RLT_FAULT_TRACE"
KILL_ENV = "RLT_FAULT_KILL"
PAUSE_ENV = "RLT_FAULT_PAUSE"

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def point(name: str) -> None:
    """Pass the crash point ``name`` (see the module docstring)."""
    trace, kill, pause = os.environ.get(TRACE_ENV), os.environ.get(KILL_ENV), os.environ.get(PAUSE_ENV)
    if not (trace or kill or pause):
        return
    with _lock:
        _counts[name] += 1
        here = f"{name}@{_counts[name]}"
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(here + "\n")
                f.flush()
                os.fsync(f.fileno())
        if kill == here:
            os.kill(os.getpid(), signal.SIGKILL)
        at, _, path = (pause or "").partition(":")
        if at == here and path:
            _wait_for(os.path.expandvars(path))


def _wait_for(path: str, timeout_s: float = 600.0) -> None:
    with open(path + ".reached", "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path + ".go") and time.monotonic() < deadline:
        time.sleep(0.05)

"""Crash-safe key locks: one holder at a time, holders are named, a SIGKILLed holder frees the key at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from infra.catalog.locks import FileLocks, LockTimeout, PgLocks, acquire, hold, owner_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from infra.catalog.locks import FileLocks, PgLocks, owner_info
    locks = {make}
    lease = locks.try_acquire("stage:abc", owner_info("run-holder"))
    print("HELD" if lease else "BUSY", flush=True)
    time.sleep(120)
""")


def _exclusion_and_sigkill(locks, make: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT, make=make)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "HELD"
        assert locks.try_acquire("stage:abc", owner_info("run-me")) is None
        holder = locks.holder("stage:abc")
        assert holder["run_id"] == "run-holder" and int(holder["pid"]) == child.pid
        seen = []
        with pytest.raises(LockTimeout, match="run-holder"):
            acquire(locks, "stage:abc", owner_info("run-me"), on_wait=seen.append, timeout_s=0.5)
        assert seen and seen[0]["run_id"] == "run-holder"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        t0 = time.monotonic()
        with hold(locks, "stage:abc", owner_info("run-me"), timeout_s=30) as lease:
            assert lease is not None
            waited = time.monotonic() - t0
            assert locks.holder("stage:abc")["run_id"] == "run-me"
        assert waited < 5, f"the next run should proceed at once after the holder died (waited {waited:.1f}s)"
        assert locks.holder("stage:abc") is None
    finally:
        if child.poll() is None:
            child.kill()


def test_file_locks_exclude_name_the_holder_and_survive_sigkill(tmp_path):
    d = str(tmp_path / "locks")
    _exclusion_and_sigkill(FileLocks(d), f"FileLocks({d!r})")


def test_file_locks_exclude_threads_of_one_process(tmp_path):
    locks = FileLocks(str(tmp_path))
    inside, overlap = [], []

    def work(i):
        with hold(locks, "k", owner_info(f"t{i}")):
            inside.append(i)
            if len(inside) > 1:
                overlap.append(i)
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap


@pytest.mark.services
def test_postgres_advisory_locks_exclude_name_the_holder_and_survive_sigkill(postgres_url):
    _exclusion_and_sigkill(PgLocks(postgres_url), f"PgLocks({postgres_url!r})")

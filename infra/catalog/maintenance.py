"""Catalog maintenance in a process of its own, so that a crash in native code cannot fail a night.

Every ``rlt factory`` run ends with :meth:`infra.catalog.lake.Catalog.maintain` (expire bookkeeping snapshots, flush
inlined rows, merge the relations' small files): housekeeping, after the night's artifacts and report are committed.
It is DuckDB/DuckLake native code. In the slow suite one of four overlapping runs died right there by SIGABRT
(glibc: ``malloc(): unaligned tcache chunk detected``; DuckDB 1.5.5), after its report and before its run record:
the night's data was committed, but the run stayed ``running`` in the catalog, exited -6, and left its temporary
Prefect server behind. Here the maintenance runs as ``python -m infra.catalog.maintenance ROOT`` (the catalog URL,
which may hold a password, goes through the environment, never argv); a child that fails or is killed by a signal
costs one warning, and the next run maintains again.

    python -m infra.catalog.maintenance ./rlt-data      # what `rlt factory` runs at the end of a night
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any, Optional

log = logging.getLogger(__name__)


def maintain_isolated(root: str, url: Optional[str] = None, timeout_s: float = 600.0,
                      python: str = sys.executable) -> Optional[dict[str, Any]]:
    """Run the catalog's maintenance for data root ``root`` in a child process. Returns its summary, or None (with
    one warning saying why) when the child failed, crashed or ran past ``timeout_s``."""
    from infra.catalog.lake import ENV_URL
    from infra.settings import redact_text

    env = dict(os.environ)
    if url:
        env[ENV_URL] = url
    try:
        proc = subprocess.run([python, "-m", "infra.catalog.maintenance", root], env=env, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("catalog maintenance skipped: it ran past %.0f s (the next run tries again)", timeout_s)
        return None
    if proc.returncode != 0:
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit {proc.returncode}")
        tail = redact_text((proc.stderr or "").strip())[-600:]
        log.warning("catalog maintenance skipped: its process %s; the night is committed, the next run tries "
                    "again%s", how, f" ({tail})" if tail else "")
        return None
    try:
        summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return summary
    except (ValueError, IndexError):
        log.warning("catalog maintenance: unreadable summary %r", redact_text(proc.stdout)[-200:])
        return None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the data root (a local folder or s3://...)")
    p.add_argument("--retention-s", type=float, default=3600.0, help="bookkeeping snapshots older than this expire")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    cat = Catalog(Store(args.root))
    try:
        print(json.dumps(cat.maintain(ledger_retention_s=args.retention_s)))
    finally:
        cat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The record every bench and experiment writes: what ran, on which commit, on how busy a machine, what came out.

    from bench import record

    record.add_arguments(parser)                                   # --results DIR, --no-record
    session = record.start_from_args("reward", parser, args, smoke=args.tiny)   # before measuring
    ...
    record.finish(session, {"score_s": 1.2, ...}, record.Ratio("score/bare throughput (wall)", 1.61, ">= 0.8"))

``finish`` writes the record (:func:`write`) and then prints the ratio line, so the ratio is always a bench's last
line. One file per (bench, variant), ``bench/results/<bench>[-<variant>].json``, overwritten by a rerun (git keeps
the older ones); smoke runs (``--tiny`` and the like) go to a temp folder unless ``--results`` names one, so a test
run never overwrites a committed record. Experiments write into a folder of their own (``docs/results/...``).

A record is one JSON object::

    {"bench": "reward", "variant": "k-4", "command": ".venv/bin/python bench/reward.py --k 4",
     "commit": "<git rev-parse HEAD>", "dirty": false, "dirty_paths": [],        # tracked files changed, if any
     "machine": {"cpus": 2, "load_start": [1m, 5m, 15m], "load_end": [...], "python": "3.12.3", "torch": "2.13.0"},
     "env": {"OMP_WAIT_POLICY": "PASSIVE"},                                       # thread settings that were set
     "started": "2026-12-01T10:00:00Z", "finished": "...",
     "numbers": {...},                                                            # what the documents quote
     "ratio": {"name": ..., "value": 1.61, "target": ">= 0.8", "pass": true}}    # null for experiments

``scripts/render_docs.py`` renders the documents' tables from these files and checks that they agree.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# record folders: a record rewritten there does not make the measured tree "dirty"
RECORD_DIRS = ("bench/results/", "docs/results/")
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
log = logging.getLogger("bench.record")


def smoke_dir() -> Path:
    """Where smoke runs write unless told otherwise: never a committed folder."""
    return Path(tempfile.gettempdir()) / "rlt-bench-results"


@dataclass(frozen=True)
class Ratio:
    """A bench's headline: ``value`` of ``name`` against ``target`` (``">= 0.8"``, ``"<= 1.1"`` or None)."""

    name: str
    value: Optional[float]
    target: Optional[str] = None
    line: Optional[str] = None   # the exact last line to print; default "<name>: <value> (target <target>)"

    def passed(self) -> Optional[bool]:
        m = re.fullmatch(r"\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", self.target or "")
        if m is None or self.value is None:
            return None
        op, bound = m.group(1), float(m.group(2))
        return {">=": self.value >= bound, "<=": self.value <= bound, ">": self.value > bound,
                "<": self.value < bound}[op]

    def text(self) -> str:
        if self.line:
            return self.line
        value = "n/a" if self.value is None else f"{self.value:.3f}"
        return f"{self.name}: {value}" + (f" (target {self.target})" if self.target else "")

    def to_json(self) -> dict:
        return {"name": self.name, "value": self.value, "target": self.target, "pass": self.passed()}


@dataclass
class Session:
    """What is known before the measurement: name, where the record goes (None: nowhere), start time and load."""

    bench: str
    variant: str = ""
    folder: Optional[str] = None
    name: Optional[str] = None   # file stem; default <bench>[-<variant>]
    command: str = ""
    started: str = ""
    load_start: list[float] = field(default_factory=list)

    @property
    def path(self) -> Optional[Path]:
        if self.folder is None:
            return None
        stem = self.name or (f"{self.bench}-{self.variant}" if self.variant else self.bench)
        return Path(self.folder) / f"{stem}.json"

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- the facts
def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The exact command as a shell line: interpreter (relative to the repo when inside it), script or -m module,
    arguments (``argv``: the arguments a ``main(argv)`` was given, else ``sys.argv[1:]``)."""
    def rel(p: str) -> str:
        path = Path(p).absolute()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else p

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name not in ("__main__", None) else [rel(sys.argv[0])]
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([rel(sys.executable), *head, *args])


def git_state(root: Path = ROOT) -> tuple[str, bool, list[str]]:
    """(HEAD commit, whether tracked files differ from it outside the record folders, those paths)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True, []
    paths = [line[3:] for line in status.splitlines() if line[3:] and not line[3:].startswith(RECORD_DIRS)]
    return commit, bool(paths), paths


def machine(load_start: list[float]) -> dict:
    info = {"cpus": os.cpu_count(), "load_start": load_start, "load_end": load_average(),
            "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = getattr(torch, "__version__", "?")
        info["torch_threads"] = torch.get_num_threads()
    return info


def quiet(rec: dict) -> bool:
    """Was the machine quiet? The 1-minute load before the run below half the CPUs, and at its end no more than the
    CPUs (the bench's own threads) + 0.5. On the 2-core dev machine: < 1.0 at the start, <= 2.5 at the end."""
    m = rec.get("machine", {})
    cpus, start, end = m.get("cpus") or 1, m.get("load_start") or [99.0], m.get("load_end") or [99.0]
    return start[0] < cpus / 2 and end[0] <= cpus + 0.5


# ----------------------------------------------------------------------------------------------------- sessions
def start(bench: str, *, variant: str = "", folder: Optional[Path | str] = RESULTS, name: Optional[str] = None,
          argv: Optional[Sequence[str]] = None) -> Session:
    """Note the start (time, load, command) of a measurement whose record goes to ``folder`` (None: no record)."""
    return Session(bench, variant, None if folder is None else str(folder), name, command_line(argv), utc_now(),
                   load_average())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", metavar="DIR", help="folder for this run's JSON record (default: bench/results/; "
                                                         "smoke runs: a temp folder)")
    parser.add_argument("--no-record", action="store_true", help="write no record")


def variant_of(parser: argparse.ArgumentParser, args: argparse.Namespace, ignore: Sequence[str] = ()) -> str:
    """The flags that differ from the parser's defaults, in the parser's order: ``--k 16 --batch-size 16`` ->
    ``k-16_batch-size-16``, ``--tiny`` -> ``tiny``. Output folders and record options never count."""
    skip = {"help", "results", "no_record", "out", "dump", "root", "keep", *ignore}
    parts = []
    for action in parser._actions:   # noqa: SLF001 - argparse keeps its actions nowhere public
        dest = action.dest
        if dest in skip or action.default == argparse.SUPPRESS or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value == action.default:
            continue
        flag = dest.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is False:
            parts.append(f"no-{flag}")
        else:
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            parts.append(f"{flag}-{re.sub(r'[^A-Za-z0-9.,]+', '-', text).strip('-')}")
    return "_".join(parts)


def start_from_args(bench: str, parser: argparse.ArgumentParser, args: argparse.Namespace, *, smoke: bool,
                    argv: Optional[Sequence[str]] = None, variant: Optional[str] = None,
                    ignore: Sequence[str] = (), default_folder: Path = RESULTS) -> Session:
    """:func:`start` for a bench's parsed arguments (``--results``/``--no-record`` from :func:`add_arguments`)."""
    folder: Optional[Path | str]
    if getattr(args, "no_record", False):
        folder = None
    elif getattr(args, "results", None):
        folder = args.results
    else:
        folder = smoke_dir() if smoke else default_folder
    return start(bench, variant=variant_of(parser, args, ignore) if variant is None else variant, folder=folder,
                 argv=argv)


# ------------------------------------------------------------------------------------------------------ writing
def write(session: Session, numbers: dict[str, Any], ratio: Optional[Ratio] = None, *,
          command: Optional[str] = None, **meta: Any) -> Optional[Path]:
    """Write the record of a finished measurement atomically; returns its path (None when not recording).
    ``meta``: further top-level fields (an experiment's ``config``, ``run_id``, ``seeds``)."""
    path = session.path
    if path is None:
        return None
    commit, dirty, paths = git_state()
    rec = {"bench": session.bench, "variant": session.variant, "command": command or session.command,
           "commit": commit, "dirty": dirty, "dirty_paths": paths[:20], "machine": machine(session.load_start),
           "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}, "started": session.started,
           "finished": utc_now(), "numbers": numbers, "ratio": None if ratio is None else ratio.to_json(), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("record: %s", path)
    return path


def finish(session: Session, numbers: dict[str, Any], ratio: Ratio, **meta: Any) -> Optional[Path]:
    """Write the record, then print the ratio: the bench's last line."""
    path = write(session, numbers, ratio, **meta)
    sys.stdout.flush()
    sys.stderr.flush()
    print(ratio.text(), flush=True)
    return path


def read(path: Path | str) -> Optional[dict]:
    """A record, or None when the file is not there."""
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None

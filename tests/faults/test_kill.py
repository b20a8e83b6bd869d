"""SIGKILL at seeded random points inside every stage (ingest, train_teacher, generate, score, filter, distill,
evaluate), inside the catalog commit and inside training.

For each stage: bring a data root to "everything upstream committed" (real ``rlt run`` of the previous stage),
keep a copy, and run the stage once uninterrupted with a crash-point trace (infra/faults.py): that run is the
reference and its trace lists every place a run of this stage can be killed (each file written, each catalog
transaction's begin / before-COMMIT / after-COMMIT, the parts registration inside the commit, the moment after
the commit; in train_teacher also after each optimizer step and after each checkpoint is saved). Then, per
trial: restore the copy, run the stage with ``RLT_FAULT_KILL`` set to a point drawn
with ``random.Random(seed)`` (the process sends itself SIGKILL there), rerun it without faults, and check that

- the killed run really died of SIGKILL, the rerun exits 0;
- the stage's artifacts have the reference's keys and are identical to the reference row for row (tables)
  or byte for byte (checkpoints: the recorded digest);
- no key committed twice, no body run twice, no duplicate ids, every committed artifact's bytes match its
  recorded digest (tests/flows/test_overlap.assert_each_key_once);
- train_teacher (the kill recipe checkpoints every step: 3 SFT + 2 GRPO steps): the rerun computes exactly the
  optimizer steps that were not in a checkpoint when the kill came (``steps_run`` in the stage's stats = total -
  the checkpoints the trace passed before the kill point), so a finished phase is never trained again and an
  interrupted one resumes from its last checkpoint; and the resumed weights are bitwise the uninterrupted run's
  (the checkpoint digest, compared like every other output).

``RLT_FAULT_TRIALS`` (default 10) trials per stage, ``RLT_FAULT_TRAIN_TRIALS`` (default 4) for train_teacher
(its runs cost several times the others'), of which at least a third are kills inside a catalog write transaction
(one of them inside the artifact's own commit, after its parts were registered, when the stage writes tables)
and, in train_teacher, half inside training after its first checkpoint. Runs go through ``flows.cli.main`` in
forked children of a pre-imported interpreter (tests/faults/zygote.py) against one real Prefect server.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.catalog.lake import Catalog
from infra.catalog.store import Store
from infra.devstack import services
from infra.faults import KILL_ENV, TRACE_ENV
from tests.faults.conftest import ROOT
from tests.flows.test_factory import tiny_recipe
from tests.flows.test_overlap import ID_COLS, assert_each_key_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(3600)]

TRIALS = int(os.environ.get("RLT_FAULT_TRIALS", "10"))
TRAIN_TRIALS = int(os.environ.get("RLT_FAULT_TRAIN_TRIALS", "4"))
SEED = int(os.environ.get("RLT_FAULT_SEED", "20261129"))
STAGES = ("ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate")   # in run order
OUTPUTS = {"ingest": ("problems", "quarantine"), "train_teacher": ("teacher_checkpoint",),
           "generate": ("explanations",), "score": ("scored_explanations",),
           "filter": ("filter_decisions", "distill_set"), "distill": ("student_checkpoint",),
           "evaluate": ("eval_results",)}
ORDER = {**ID_COLS, "quarantine": "source, source_row, reason, field"}   # a total row order per table
TRAIN_STEPS = {"sft": 3, "grpo": 2}   # the kill recipe's train_teacher, a checkpoint after every step
COMMIT_POINTS = ("catalog.txn.begin", "catalog.commit.parts_registered", "catalog.txn.before_commit",
                 "catalog.txn.committed")
VOLATILE = {"run_id", "created_at", "committed_at", "ts", "seconds", "latency_s"}   # differ between any two runs


class Zygote:
    """Runs ``rlt`` commands in forked children of tests/faults/zygote.py."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults.zygote"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        assert ready and json.loads(ready).get("ready"), "zygote did not start"

    def run(self, argv: list[str], log: Path, env: dict | None = None, timeout_s: float = 900) -> tuple[int, float]:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env or {}, "log": str(log)}) + "\n")
        pid = json.loads(self.proc.stdout.readline())["pid"]
        deadline = time.time() + timeout_s
        import select

        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 5)
            if ready:
                res = json.loads(self.proc.stdout.readline())
                return res["rc"], res["seconds"]
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{argv} ran past {timeout_s}s; log tail:\n{log.read_text()[-3000:]}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One real Prefect server for all the runs of this module (no temporary server per process)."""
    root = tmp_path_factory.mktemp("prefect")
    port = services.free_port()
    home = root / "home"
    home.mkdir()
    spec = services.ServiceSpec(
        name="prefect", argv=(sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                              "--port", str(port), "--no-ui"),
        env={"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        health=services.HealthCheck(port=port, path="/api/health"))
    services.start_and_wait(root, spec, timeout_s=180.0)
    try:
        yield f"http://127.0.0.1:{port}/api", str(home)
    finally:
        services.stop(root, "prefect", grace_s=10.0)


@pytest.fixture(scope="module")
def rlt(prefect_api):
    api, home = prefect_api
    env = {**os.environ, "PYTHONPATH": ROOT, "PREFECT_API_URL": api, "PREFECT_HOME": home,
           "RLT_LOG_LEVEL": "INFO"}
    for name in (KILL_ENV, TRACE_ENV):
        env.pop(name, None)
    z = Zygote(env)
    yield z
    z.close()


def _copy_root(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def _outputs(root: str, stage: str) -> dict:
    """The stage's committed artifacts: key -> rows (tables, volatile columns dropped, sorted) or digest."""
    cat = Catalog(Store(root), read_only=True)
    recs = cat.rows("SELECT * FROM artifacts_committed WHERE name IN ?", [list(OUTPUTS[stage])])
    tables = cat.refresh_data_views() if any(r["name"] in ID_COLS for r in recs) else set()
    out = {}
    for r in recs:
        if r["name"] in tables:
            rows = cat.rows(f"SELECT * FROM data_{r['name']} WHERE artifact_key = ? ORDER BY {ORDER[r['name']]}",
                            [r["key"]])
            out[(r["name"], r["key"])] = [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]
        else:
            out[(r["name"], r["key"])] = r["digest"]
    return out


def _diff(got, want) -> str:
    if not (isinstance(got, list) and isinstance(want, list)):
        return f"{got!r} != {want!r}"
    if len(got) != len(want):
        return f"{len(got)} rows != {len(want)} rows"
    for j, (a, b) in enumerate(zip(got, want)):
        cols = sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))
        if cols:
            return f"row {j}: " + "; ".join(f"{c}: {str(a.get(c))[:80]!r} != {str(b.get(c))[:80]!r}" for c in cols)
    return "?"


def _checkpointed(trace: list[str], point: str) -> int:
    """Training steps safe in a checkpoint when a run is killed at ``point``: the checkpoints saved up to there."""
    return sum(p.startswith("train.checkpoint@") for p in trace[:trace.index(point) + 1])


def _draw(trace: list[str], rng: random.Random, n: int) -> list[str]:
    """``n`` kill points: at least a third inside a catalog commit transaction, half inside training after its
    first checkpoint (stages that train), the rest anywhere."""
    inside = [p for p in trace if p.split("@")[0] in COMMIT_POINTS]
    n_commit = max(1, -(-n // 3))
    registered = [p for p in inside if p.startswith("catalog.commit.parts_registered@")]
    picks = rng.sample(registered, 1) if registered else []   # one inside the artifact's own commit, when it has parts
    picks += rng.sample([p for p in inside if p not in picks], min(n_commit - len(picks), len(inside) - len(picks)))
    training = [p for p in trace if p.startswith("train.") and _checkpointed(trace, p) >= 1]
    if training:   # (no draw otherwise: the other stages keep the points their seed always gave)
        picks += rng.sample(training, min(n // 2, len(training)))
    rest = [p for p in trace if p not in picks]
    picks += rng.sample(rest, n - len(picks))
    rng.shuffle(picks)
    return picks


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, tiny_model_dir) -> str:
    path = tmp_path_factory.mktemp("recipe") / "kill.yaml"
    recipe = tiny_recipe(tiny_model_dir, generate={"shard_size": 2})
    for phase, steps in TRAIN_STEPS.items():   # a checkpoint after every step: kills land between checkpoints
        recipe["train_teacher"][phase]["max_steps"] = steps
        recipe["train_teacher"][phase]["runtime"]["save_steps"] = 1
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def base_roots(tmp_path_factory, rlt, recipe_path):
    """Per stage: a saved root where everything upstream is committed, the reference outputs and the trace."""
    work = tmp_path_factory.mktemp("kill")
    root, logs = str(work / "data"), work / "logs"
    logs.mkdir()
    os.makedirs(root)   # empty: ingest has nothing upstream
    saved = {}
    for stage in STAGES:
        saved[stage] = str(work / f"before-{stage}")
        _copy_root(root, saved[stage])
        trace = work / f"trace-{stage}.txt"
        rc, secs = rlt.run(["--data-root", root, "run", stage, "--recipe", recipe_path], logs / f"ref-{stage}.log",
                           env={TRACE_ENV: str(trace)})
        assert rc == 0, (logs / f"ref-{stage}.log").read_text()[-4000:]
        saved[stage] = (saved[stage], _outputs(root, stage), trace.read_text().split(), secs)
    return root, logs, saved


def _steps_run(root: str) -> int:
    """The optimizer steps the last train_teacher run computed: its stats' ``steps_run`` when its body ran and
    committed, 0 when it found the artifact committed (by the killed run) and ran nothing."""
    cat = Catalog(Store(root), read_only=True)
    last = cat.rows("SELECT status, artifact_key FROM stage_runs WHERE stage = 'train_teacher' ORDER BY ts DESC "
                    "LIMIT 1")[0]
    if last["status"] == "cached":
        return 0
    assert last["status"] == "done", last
    return json.loads(cat.artifact(last["artifact_key"])["stats_json"])["steps_run"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_anywhere_then_rerun_gives_the_identical_artifact(stage, base_roots, rlt, recipe_path,
                                                                  fault_report):
    root, logs, saved = base_roots
    before, reference, trace, ref_seconds = saved[stage]
    assert {name for name, _ in reference} == set(OUTPUTS[stage]) and any(reference.values()), \
        f"{stage}: the reference run committed nothing"
    assert any(p.split("@")[0] in COMMIT_POINTS for p in trace), trace
    total_steps = sum(TRAIN_STEPS.values()) if stage == "train_teacher" else 0
    if total_steps:   # the trace is the crash points' ground truth: one checkpoint per step
        assert sum(p.startswith("train.checkpoint@") for p in trace) == total_steps, trace
    points = _draw(trace, random.Random(f"{SEED}-{stage}"), TRAIN_TRIALS if total_steps else TRIALS)
    t0, killed, inside_commit, outcomes = time.time(), 0, 0, []
    for i, point in enumerate(points):
        _copy_root(before, root)
        log = logs / f"{stage}-{i}.log"
        argv = ["--data-root", root, "run", stage, "--recipe", recipe_path]
        rc, _ = rlt.run(argv, log, env={KILL_ENV: point})
        assert rc == -signal.SIGKILL, f"trial {i} ({point}): expected death by SIGKILL, got rc {rc}\n" + \
            log.read_text()[-3000:]
        killed += 1
        inside_commit += point.split("@")[0] in COMMIT_POINTS
        rc, _ = rlt.run(argv, log)
        assert rc == 0, f"trial {i}: the rerun after a kill at {point} failed\n" + log.read_text()[-4000:]
        got = _outputs(root, stage)
        assert got.keys() == reference.keys(), f"trial {i} ({point}): artifacts {sorted(got)} != {sorted(reference)}"
        for k in reference:
            assert got[k] == reference[k], f"trial {i} ({point}): {k} differs from the uninterrupted run: " + \
                _diff(got[k], reference[k])
        assert_each_key_once(root)
        if total_steps:
            kept = _checkpointed(trace, point)
            ran = _steps_run(root)
            assert ran == total_steps - kept, f"trial {i} ({point}): the rerun computed {ran} optimizer steps; " \
                f"{kept} of {total_steps} were in a checkpoint at the kill, so {total_steps - kept} were left"
            point += f" ({kept}+{ran} steps)"
        outcomes.append(point)
    steps_note = (f"; rerun computed exactly the {sum(TRAIN_STEPS.values())} optimizer steps less those "
                  "checkpointed before the kill (checkpointed+rerun shown per point), weights bitwise identical"
                  if total_steps else "")
    fault_report.record(
        fault=f"SIGKILL inside {stage}", trials=killed,
        outcome="rerun exit 0; artifacts identical to an uninterrupted run; no duplicate ids or keys; digests match"
                + steps_note,
        detail=f"{inside_commit} of the kills inside a catalog write transaction; points (seed {SEED}): "
               + ", ".join(outcomes), seconds=time.time() - t0)

"""Does the catalog stay fast after many nights? Simulated factory nights through the project's own Catalog API.

    python bench/manifest_scale.py --nights 1,100 --shards 50           # local: SQLite catalog, local data root
    python bench/manifest_scale.py --nights 1,100 --shards 50 --s3      # SeaweedFS S3 data root + PostgreSQL catalog
    python bench/manifest_scale.py --nights 1,5 --shards 5 --no-maintain --root /tmp/lake --keep

One simulated night writes what a real factory night writes (no model work): a ``runs`` record (running, a
"ledger" snapshot), then for each of the 8 graph nodes (flows.pipeline.NODES) with new keys (new inputs every
night): for the sharded nodes (generate, score and evaluate[distilled], standing in for any sharded evaluation)
one ``shards`` "done" record per shard, each its own ``catalog.append`` under the shard's lock as infra/engine/shards.py
does, each with one real parquet part in the shard's folder (contract EXAMPLE rows with distinct ids); then one
``catalog.commit`` per node under its ``stage:<key>`` lock, exactly as infra/engine/runner.py commits: the parts are
first consolidated into few files (ArtifactWriter.consolidate), then registered with lineage, provenance and the
stage_runs row (--single-part: skip the per-shard parts, one small part per output). Then a
``runs`` record (done) and ``catalog.maintain(ledger_retention_s=0)`` as flows/factory.py does at the end of every
run; retention 0 expires the night's bookkeeping snapshots at once, as a real night's are expired by the next
night's maintenance (file retention stays at its default of a day, so files merged away are still on disk and
counted under _lake).

Measured at each night of --nights (mid-night: upstream committed, score half done, i.e. a crashed night):
- plan lookups: flows/plan.py ``annotate`` itself on the night's 8 nodes (some committed, some not): the
  committed keys, the shard ledgers and the latest artifacts (one batched query each), and the lock holders;
- shard resume (infra/engine/shards.py): ``shard_states`` of the uncommitted score key with shards/2 done shards.
Each is timed on the open handle (median of --reps) and once on a fresh ``Catalog(Store(root))`` (attach
included), in wall and in process CPU seconds (CPU time is robust when the machine is shared; it does not count
PostgreSQL's or S3's side). The last lines are the ratios last / first measured night on the open handle, wall and
CPU; PASS needs both <= 2.0; the very last line is the worst of the four. Writes its record (bench/record.py) to
``bench/results/manifest_scale[-s3].json``; fewer than 100 nights or 50 shards is a smoke run (a temp folder unless
``--results``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm

from flows.pipeline import NODES, From
from infra.catalog.artifacts import ArtifactWriter, KeyParts
from infra.catalog.lake import RELATIONS, Catalog
from infra.catalog.locks import FileLocks, PgLocks, owner_info
from infra.catalog.store import Store

log = logging.getLogger("bench.manifest_scale")
SHARDED = ("generate", "score", "evaluate[distilled]")
RESUMED = "score"   # the node a measured night is interrupted in
TARGET = 2.0


def night_plan(n: int) -> list[tuple]:
    """(node, key parts, output keys) of every node of night ``n``; keys chain through the graph."""
    keys: dict[str, dict[str, str]] = {}
    out = []
    for node in NODES:
        inputs = {r: keys[s.node][s.output] if isinstance(s, From) else "model:bench-student"
                  for r, s in node.inputs.items()}
        parts = KeyParts(node.stage.name, node.stage.version, {"night": n, "label": node.label}, inputs,
                         {r: "bench" for r, v in inputs.items() if v.startswith("model:")})
        keys[node.id] = node.stage.output_keys(parts.key())
        out.append((node, parts, keys[node.id]))
    return out


def example_rows(contract, tag: str, n: int = 4) -> list[dict]:
    return [{c: f"{v}-{tag}-{i}" if c.endswith("_id") and isinstance(v, str) else v
             for c, v in contract.example.items()} for i in range(n)]


class Night:
    def __init__(self, cat: Catalog, locks, shards: int, shard_parts: bool):
        self.cat, self.locks, self.shards, self.shard_parts = cat, locks, shards, shard_parts

    def run_record(self, run_id: str, status: str) -> None:
        self.cat.append("runs", [dict(run_id=run_id, flow="rlt-factory", status=status, recipe="bench",
                                      recipe_hash="bench", host="bench", detail="")],
                        message="ledger" if status == "running" else "run")

    def shard_done(self, run_id: str, node, w: ArtifactWriter, sids) -> None:
        for i in sids:
            sid, folder = f"{i:05d}", f"{w.uri}/shards/{i:05d}"
            lease = self.locks.try_acquire(f"shard:{w.key}:{sid}", owner_info(run_id))
            part = (w.write_part(example_rows(w.contract, f"{w.key}-{sid}"), folder) if self.shard_parts
                    else f"{folder}/part-0.parquet")
            self.cat.append("shards", [dict(artifact_key=w.key, stage=node.stage.name, shard_id=sid, status="done",
                                            num_rows=4, files=[self.cat.store.rel(part)], error="", run_id=run_id,
                                            host="bench", pid=os.getpid())])
            lease.release()

    def commit(self, run_id: str, node, parts: KeyParts, writers: dict[str, ArtifactWriter]) -> None:
        specs = []
        for o in node.stage.outputs:   # each output is its contract
            w = writers[o.name]
            if not w.files:
                w.write_part(example_rows(o, f"{w.key}"))
            w.consolidate()   # as infra/engine/runner.py does: many shard parts -> few files before the commit
            specs.append(w.commit_spec(o.provenance))
        key = parts.key()
        row = dict(run_id=run_id, stage=node.stage.name, label=node.label, artifact_key=key, status="done",
                   cached=False, seconds=1.0, detail="{}")
        lease = self.locks.try_acquire(f"stage:{key}", owner_info(run_id))
        assert self.cat.commit(specs, {"stage_runs": [row]}, message=f"commit {node.stage.name}")
        lease.release()

    def run(self, n: int, maintain: bool, measure=None) -> tuple[dict | None, float]:
        run_id, plan, result = f"run-bench-{n:05d}", night_plan(n), None
        self.run_record(run_id, "running")
        for node, parts, keys in plan:
            writers = {o.name: ArtifactWriter(self.cat.store, o.name, keys[o.name], parts, run_id, o, node.label)
                       for o in node.stage.outputs}
            if node.id in SHARDED:
                w = writers[node.stage.primary]
                half = self.shards // 2 if measure and node.id == RESUMED else self.shards
                self.shard_done(run_id, node, w, range(half))
                if half < self.shards:   # the night "crashes" here: measure, then the rerun finishes it
                    result = measure(plan, w.key)
                    self.shard_done(run_id, node, w, range(half, self.shards))
            self.commit(run_id, node, parts, writers)
        self.run_record(run_id, "done")
        t0 = time.perf_counter()
        if maintain:
            self.cat.maintain(ledger_retention_s=0)
        return result, time.perf_counter() - t0


class Clock:
    """Wall and process CPU seconds per lookup kind (CPU time: robust when the machine is shared)."""

    def __init__(self):
        self.t: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        yield
        self.t[name] = (time.perf_counter() - w, time.process_time() - c)


def plan_lookups(cat: Catalog, locks, plan, clock: Clock) -> None:
    """What ``rlt plan`` does: flows/plan.py annotate() itself, on this catalog and these locks."""
    from flows.pipeline import Planned
    from flows.plan import annotate
    from infra.engine.context import RunContext

    ctx = RunContext(cat.store.root, tracking=False)
    ctx.__dict__.update(catalog=cat, locks=locks)
    with clock("plan lookups"):
        annotate(ctx, [Planned(node, None, parts, keys) for node, parts, keys in plan])


def measure(cat: Catalog, locks, url: str | None, reps: int, shards: int, plan, key: str) -> dict:
    """Open-handle medians and fresh-handle (attach + lookups) times of the plan and resume lookups."""
    t_start = time.perf_counter()

    def resume(c: Catalog, clock: Clock) -> None:
        with clock("shard resume"):
            states = c.shard_states(key)
        assert len(states) == shards // 2, (len(states), shards // 2)

    runs = []
    for _ in range(reps):
        clock = Clock()
        plan_lookups(cat, locks, plan, clock)
        resume(cat, clock)
        runs.append(clock.t)
    out = {"open": {k: tuple(statistics.median(r[k][i] for r in runs) for i in (0, 1)) for k in runs[0]},
           "fresh": {}}
    for name, fn in (("plan lookups", lambda c, clock: plan_lookups(c, locks, plan, clock)),
                     ("shard resume", resume)):
        fresh, clock = Catalog(Store(cat.store.root), url), Clock()
        with clock("attach"):
            fresh.con   # noqa: B018 - opens the connection: ATTACH and views
        fn(fresh, clock)
        fresh.close()
        clock.t[name] = tuple(a + b for a, b in zip(clock.t[name], clock.t["attach"]))   # attach included
        out["fresh"].update(clock.t)
    rows = {r: cat.rows(f"SELECT count(*) AS n FROM lake.main.{r}")[0]["n"] for r in RELATIONS}
    meta = "__ducklake_metadata_lake"
    out["counts"] = {
        "rows": rows, "snapshots": cat.rows("SELECT count(*) AS n FROM lake.snapshots()")[0]["n"],
        "live data files": cat.rows(f"SELECT count(*) AS n FROM {meta}.ducklake_data_file "
                                    "WHERE end_snapshot IS NULL")[0]["n"],
        "file stats rows": cat.rows(f"SELECT count(*) AS n FROM {meta}.ducklake_file_column_stats")[0]["n"],
        "_lake files": count_files(cat.store, "_lake")}
    if cat.location.kind == "sqlite":
        out["counts"]["catalog.sqlite MB"] = round(os.path.getsize(cat.location.sqlite_path) / 2 ** 20, 2)
    out["seconds"] = time.perf_counter() - t_start
    return out


def count_files(store: Store, folder: str) -> int:
    path = store.path(folder)
    if store.local:
        return sum(len(files) for _, _, files in os.walk(path))
    store.fs.invalidate_cache()
    return len(store.fs.find(path)) if store.fs.exists(path) else 0


@contextlib.contextmanager
def s3_and_postgres(tmp: str):
    """SeaweedFS S3 + PostgreSQL, started and stopped with the stack's code (as tests/infra/devstack/services_fixtures.py)."""
    from pydantic import SecretStr

    from infra.devstack import services, stack

    with contextlib.ExitStack() as es:
        s3dir = os.path.join(tmp, "seaweedfs")
        creds = stack.S3Credentials(key="rlt-bench", secret=SecretStr(f"bench-{secrets.token_hex(8)}"))
        ports = stack.allocate_ports(stack.StackConfig())
        spec = stack.seaweedfs_spec(s3dir, ports, creds)
        services.start_and_wait(s3dir, spec, timeout_s=120.0)
        es.callback(stack.remove_weed_sockets, ports)
        es.callback(services.stop, s3dir, spec.name, grace_s=10.0)
        endpoint, bucket = stack.s3_endpoint(ports), "rlt-bench"
        stack.ensure_bucket(endpoint, creds, bucket, "us-east-1")
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=creds.key, AWS_DEFAULT_REGION="us-east-1",
                          AWS_SECRET_ACCESS_KEY=creds.secret.get_secret_value())
        pgdir = os.path.join(tmp, "postgres")
        cluster = stack.prepare_postgres(pgdir)
        if not os.path.realpath(cluster.cluster_dir).startswith(os.path.realpath(pgdir)):
            es.callback(shutil.rmtree, cluster.cluster_dir, ignore_errors=True)   # the root-user fallback folder
        pg = stack.postgres_spec(cluster, services.free_port())
        services.start_and_wait(pgdir, pg, timeout_s=120.0)
        es.callback(services.stop, pgdir, pg.name, grace_s=10.0)
        catalog = stack.ensure_catalog(pgdir, pg.health.port, timeout_s=60.0)   # the stack's roles: writer URL
        log.info("S3 at %s, PostgreSQL on port %d", endpoint, pg.health.port)
        yield f"s3://{bucket}/bench-{time.strftime('%Y%m%d-%H%M%S')}", catalog["RLT_CATALOG_URL"]


def table(night: int, m: dict, wrote_s: float, maintain_s: float) -> str:
    c = m["counts"]
    size = f"; catalog.sqlite {c['catalog.sqlite MB']} MB" if "catalog.sqlite MB" in c else ""
    lines = [(f"\nnight {night}: wrote the night in {wrote_s:.1f} s (maintain {maintain_s:.2f} s); snapshots "
              f"{c['snapshots']}; live data files {c['live data files']} ({c['file stats rows']} file stats rows); "
              f"files under _lake {c['_lake files']}{size}"),
             "rows: " + ", ".join(f"{k} {v}" for k, v in c["rows"].items()),
             f"{'seconds':<20} {'open: wall':>11} {'open: cpu':>10} {'fresh: wall':>12} {'fresh: cpu':>11}"]
    for k in [*m["open"], "attach"]:
        w, cpu = m["open"].get(k, ("-", "-"))
        o = f"{w:>11.4f} {cpu:>10.4f}" if k in m["open"] else f"{w:>11} {cpu:>10}"
        lines.append(f"{k:<20} {o} {m['fresh'][k][0]:>12.4f} {m['fresh'][k][1]:>11.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", default="1,100", help="nights to measure at (all nights up to the max are run)")
    ap.add_argument("--shards", type=int, default=50, help="shards per sharded stage")
    ap.add_argument("--reps", type=int, default=7, help="repetitions on the open handle (median)")
    ap.add_argument("--s3", action="store_true", help="data root on SeaweedFS S3, catalog on PostgreSQL")
    ap.add_argument("--no-maintain", action="store_true", help="skip catalog.maintain() after each night")
    ap.add_argument("--single-part", action="store_true",
                    help="no per-shard parquet parts: one small part per output (less realistic, faster)")
    ap.add_argument("--root", help="data root (default: a temporary folder, deleted at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the data root (and the services folder)")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("infra.catalog.lake").setLevel(logging.WARNING)   # one maintenance line per night otherwise
    nights = sorted({int(n) for n in args.nights.split(",")})
    assert args.shards >= 2 and nights[0] >= 1
    session = record.start_from_args("manifest_scale", ap, args, smoke=nights[-1] < 100 or args.shards < 50,
                                     argv=argv)
    tmp = tempfile.mkdtemp(prefix="manifest-scale-")
    with contextlib.ExitStack() as es:
        if not args.keep:
            es.callback(shutil.rmtree, tmp, ignore_errors=True)
        url = None
        if args.s3:
            root, url = es.enter_context(s3_and_postgres(tmp))
        else:
            root = args.root or os.path.join(tmp, "data")
        cat = Catalog(Store(root), url)
        es.callback(cat.close)
        loc = cat.location
        locks = PgLocks(loc.dsn) if loc.kind == "postgres" else FileLocks(loc.lock_dir)
        log.info("catalog %s, data root %s, maintenance %s", cat, root, "off" if args.no_maintain else "on")
        sim, results = Night(cat, locks, args.shards, not args.single_part), {}
        for n in tqdm(range(1, nights[-1] + 1), desc="nights", unit="night"):
            probe = (lambda plan, key: measure(cat, locks, url, args.reps, args.shards, plan, key)) \
                if n in nights else None
            t0 = time.perf_counter()
            m, maintain_s = sim.run(n, not args.no_maintain, probe)
            if m is not None:
                results[n] = m
                print(table(n, m, time.perf_counter() - t0 - m["seconds"], maintain_s), flush=True)
        if args.keep:
            log.info("kept the data root %s (services folder %s)", root, tmp)
    first, last = nights[0], nights[-1]
    print()
    ratios = {}
    for k in ("plan lookups", "shard resume"):
        wall, cpu = (results[last]["open"][k][i] / results[first]["open"][k][i] for i in (0, 1))
        fresh = results[last]["fresh"][k][0] / results[first]["fresh"][k][0]
        ratios[k] = {"wall": wall, "cpu": cpu, "fresh_wall": fresh}
        print(f"{k}: night {last} / night {first} = {wall:.2f} wall, {cpu:.2f} cpu (fresh handle {fresh:.2f} wall), "
              f"target <= {TARGET}: {'PASS' if max(wall, cpu) <= TARGET else 'FAIL'}")
    worst = max(max(r["wall"], r["cpu"]) for r in ratios.values())
    numbers = {"nights": nights, "shards": args.shards, "reps": args.reps, "s3": args.s3,
               "maintain": not args.no_maintain, "single_part": args.single_part,
               "measured": {str(n): {"open": {k: {"wall": v[0], "cpu": v[1]} for k, v in m["open"].items()},
                                     "fresh": {k: {"wall": v[0], "cpu": v[1]} for k, v in m["fresh"].items()},
                                     "counts": m["counts"]} for n, m in results.items()},
               "ratios": ratios}
    record.finish(session, numbers, record.Ratio(
        f"worst ratio night {last} / night {first} (plan and resume, wall and cpu)", worst, f"<= {TARGET}",
        line=f"worst ratio night {last} / night {first} (plan and resume, wall and cpu): {worst:.2f}, "
             f"target <= {TARGET}: {'PASS' if worst <= TARGET else 'FAIL'}"))


if __name__ == "__main__":
    main()

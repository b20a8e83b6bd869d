"""Peak memory of `rlt catalog sql` over one committed explanations artifact, at growing sizes: must stay flat.

    .venv/bin/python bench/manifest_sql_memory.py                          # 10k and 1M rows (minutes)
    .venv/bin/python bench/manifest_sql_memory.py --sizes 1000,10000       # smoke run (seconds)
    .venv/bin/python bench/manifest_sql_memory.py --part-rows 50000 --keep # keep the temp data roots

For each size a fresh local data root (a temp dir) gets ONE explanations artifact with that many rows, committed
the way the stage runner does it (infra/engine/runner.py): parquet parts of --part-rows rows written with
``ArtifactWriter.write_part`` (rows built by a generator, completions of a few hundred varied characters), then one
``Catalog.commit`` of the writer's ``commit_spec`` (zero-copy registration, provenance, a stage_runs row).

Then the real CLI runs in a fresh process, twice per size:

* ``count``:  ``rlt catalog sql "SELECT count(*) FROM data_explanations" --json``; the answer must equal the size;
* ``stream``: ``rlt catalog sql "SELECT explanation_id, length(completion) FROM data_explanations" --json``
  with stdout to /dev/null: every row goes through the CLI, which must fetch them in batches.

Peak RSS: each CLI call is started by a small wrapper process that waits for it and reads
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, so the number covers that one CLI process only (the peak of the
largest waited-for child, sampled by the kernel: no polling gaps). Printed: a table (size, rows, parquet MB on
disk, peak RSS MiB and seconds per query), then LAST the ratio peak RSS(largest size) / peak RSS(smallest size)
per query against the target "flat" (<= 1.25), with PASS/FAIL, the stream query's ratio last. Writes its record
(bench/record.py) to ``bench/results/manifest_sql_memory.json``; a run whose largest size is under 1M rows is a
smoke run (a temp folder unless ``--results``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
log = logging.getLogger("bench.manifest_sql_memory")

TARGET = 1.25
QUERIES = {"count": ("SELECT count(*) FROM data_explanations", True),
           "stream": ("SELECT explanation_id, length(completion) FROM data_explanations", False)}
# argv[1] = file for the child's stdout ('' = /dev/null); the rest = the command. Prints {"rss_kib", "seconds"}.
WRAPPER = """import json, resource, subprocess, sys, time
t0 = time.perf_counter()
with open(sys.argv[1] or "/dev/null", "wb") as out:
    rc = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.PIPE)
dt = time.perf_counter() - t0
sys.stderr.buffer.write(rc.stderr[-4000:])
print(json.dumps({"rc": rc.returncode, "seconds": dt,
                  "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
_SENTENCES = ("We need to reach {t} using each of the numbers exactly once.", "First, {a} * {b} = {ab}.",
              "Then {ab} + {c} = {abc}, which is {d} away from the target.", "Subtracting instead gives {amb}.",
              "Multiplying first keeps every intermediate value an integer.", "Let me double-check: {a} + {b} = {apb}.",
              "That overshoots, so we try a different order of operations.",
              "So the final equation is {a} * {b} + {c}.",
              "Dividing {ab} by {a} brings us back to {b}, a useful sanity check.")
_R = random.Random(7)   # a fixed vocabulary of pseudo-words: text that compresses about as well as prose (~3-4x)
VOCAB = ["".join(_R.choice("etaoinshrdlucmfwypvbgkqjxz"[:_R.randint(8, 26)]) for _ in range(_R.randint(2, 9)))
         for _ in range(3000)]


def rows(start: int, n: int, seed: int):
    """n explanation rows (ids start..start+n-1), generated lazily; completions ~200-700 chars, all different."""
    from data_contracts.explanations import EXAMPLE

    rng = random.Random(seed * 1_000_003 + start)
    for i in range(start, start + n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
        v = dict(a=a, b=b, c=c, ab=a * b, abc=a * b + c, amb=a * b - c, apb=a + b, t=a * b + c, d=rng.randint(0, 50))
        text = " ".join(rng.choice(_SENTENCES).format(**v) + " " + " ".join(rng.choices(VOCAB, k=rng.randint(2, 9)))
                        for _ in range(rng.randint(3, 8)))
        pid = hashlib.blake2b(f"p{i // 4}".encode(), digest_size=8).hexdigest()
        yield {**EXAMPLE, "explanation_id": "e_" + hashlib.blake2b(f"e{i}".encode(), digest_size=8).hexdigest(),
               "problem_id": "p_" + pid, "sample_index": i % 4, "seed": i,
               "question": f"Using the numbers [{a}, {b}, {c}], create an equation that equals {v['t']}.",
               "solution": f"{a} * {b} + {c} = {v['t']}", "completion": text + "\n\n<|end_of_explanation|>",
               "completion_tokens": len(text) // 4, "latency_s": round(rng.uniform(0.2, 3.0), 3),
               "finish_reason": "stop" if rng.random() < 0.9 else "length"}


def build(root: str, n: int, part_rows: int, seed: int) -> float:
    """Commit one explanations artifact of n rows into a fresh data root; its parquet size in MB."""
    from tqdm import tqdm

    from data_contracts import explanations
    from infra.catalog.artifacts import ArtifactWriter, KeyParts
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store
    from tasks.generate import STAGE

    store, run_id = Store(root), f"bench-{n}"
    parts = KeyParts("generate", STAGE.version, {"bench_rows": n, "seed": seed}, {"teacher": "model:bench"})
    w = ArtifactWriter(store, "explanations", parts.key(), parts, run_id, explanations.CONTRACT)
    for start in tqdm(range(0, n, part_rows), desc=f"parts ({n:,} rows)", unit="part", leave=False):
        w.write_part(rows(start, min(part_rows, n - start), seed))
    t0 = time.time()
    cat = Catalog(store)
    stage_row = dict(run_id=run_id, stage="generate", label="", artifact_key=w.key, status="done", cached=False,
                     seconds=0.0, detail="{}")
    if not cat.commit([w.commit_spec(STAGE.outputs[0].provenance)], {"stage_runs": [stage_row]},
                      message="commit generate"):
        raise RuntimeError(f"{w.key} was already committed in {root}")
    cat.close()
    log.info("committed %s: %d rows in %d parts (commit %.1fs)", w.key[:12], w.num_rows, len(w.files),
             time.time() - t0)
    return sum(os.path.getsize(p) for p in w.parquet_parts()) / 1e6


def measure(root: str, sql: str, answer_file: str | None) -> dict:
    """Run the CLI in a fresh process under the wrapper; its peak RSS (MiB), seconds and (maybe) JSON answer."""
    cli = [sys.executable, "-m", "flows.cli", "--data-root", root, "catalog", "sql", sql, "--json"]
    env = {**os.environ, "RLT_LOG_LEVEL": "WARNING"}
    p = subprocess.run([sys.executable, "-c", WRAPPER, answer_file or "", *cli], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)
    m = json.loads(p.stdout.strip().splitlines()[-1])
    if m["rc"] != 0:
        raise RuntimeError(f"CLI failed (rc {m['rc']}): {sql}\n{p.stderr}")
    out = {"rss": m["rss_kib"] / 1024, "s": m["seconds"]}
    if answer_file:
        with open(answer_file) as fh:
            out["answer"] = json.load(fh)
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,1000000", help="comma-separated row counts (default 10000,1000000)")
    ap.add_argument("--part-rows", type=int, default=50000, help="rows per parquet part (default 50000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp data roots (their paths are logged)")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("infra", "tasks", "prefect", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    session = record.start_from_args("manifest_sql_memory", ap, args, smoke=sizes[-1] < 1_000_000, argv=argv)
    results, roots = [], []
    try:
        for n in sizes:
            root = tempfile.mkdtemp(prefix=f"rlt-bench-sql-{n}-")
            roots.append(root)
            t0 = time.time()
            mb = build(root, n, args.part_rows, args.seed)
            log.info("size %d: data root %s, %.1f MB of parquet, built in %.1fs", n, root, mb, time.time() - t0)
            r = {"size": n, "mb": mb}
            for name, (sql, check) in QUERIES.items():
                m = measure(root, sql, os.path.join(root, f"answer-{name}.json") if check else None)
                if check:
                    got = list(m["answer"][0].values())[0]
                    r["rows"] = got
                    if got != n:
                        raise AssertionError(f"{name}: the CLI answered {got}, expected {n}")
                r[name] = m
                log.info("size %d: %s peak RSS %.1f MiB in %.2fs", n, name, m["rss"], m["s"])
            results.append(r)
    finally:
        for root in roots:
            if args.keep:
                log.info("kept %s", root)
            else:
                shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'size':>10} {'rows':>10} {'parquet MB':>11} " +
          " ".join(f"{q + ' RSS MiB':>16} {q + ' s':>9}" for q in QUERIES))
    for r in results:
        print(f"{r['size']:>10,} {r['rows']:>10,} {r['mb']:>11.1f} " +
              " ".join(f"{r[q]['rss']:>16.1f} {r[q]['s']:>9.2f}" for q in QUERIES))
    ratios = {q: results[-1][q]["rss"] / results[0][q]["rss"] for q in QUERIES}
    for q, ratio in ratios.items():
        if q != "stream":   # the stream query's ratio is the bench's last line
            print(f"peak RSS ratio {q}: {results[-1]['size']:,} / {results[0]['size']:,} rows = {ratio:.3f} "
                  f"(target flat <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}")
    numbers = {"part_rows": args.part_rows, "sizes": [{"size": r["size"], "rows": r["rows"], "parquet_mb": r["mb"],
                                                        **{q: {"rss_mib": r[q]["rss"], "seconds": r[q]["s"]}
                                                           for q in QUERIES}} for r in results],
               "ratios": ratios}
    ratio = ratios["stream"]
    record.finish(session, numbers, record.Ratio(
        "peak RSS ratio stream (largest / smallest size)", ratio, f"<= {TARGET}",
        line=f"peak RSS ratio stream: {results[-1]['size']:,} / {results[0]['size']:,} rows = {ratio:.3f} "
             f"(target flat <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}"))
    return 0 if max(ratios.values()) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

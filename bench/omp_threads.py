"""Why in-process torch work stays on one thread: decode-sized ops on the thread that first ran torch vs after a
second thread has run torch ops too (libgomp then stops spin-waiting between OpenMP regions on a small machine).

    python bench/omp_threads.py            # 20k x (8x576 @ 576x1536, silu, sum): SmolLM2 decode-step sized

Prints seconds for: worker thread first (the only torch thread so far), the same worker again, the main thread
(now a second torch thread), the worker again; and, last, the ratio "after a second torch thread / one thread".
Writes its record (bench/record.py) to ``bench/results/omp_threads[-<variant>].json``; the variant names the OpenMP
settings of the environment (``OMP_WAIT_POLICY=active python bench/omp_threads.py`` -> ``omp-wait-policy-active``);
fewer ``--iters`` than the default is a smoke run (a temp folder unless ``--results``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.omp_threads")
OMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def _env_variant() -> str:
    """``OMP_WAIT_POLICY=active`` -> ``omp-wait-policy-active``: the settings this bench is run under."""
    return "_".join(f"{k.lower().replace('_', '-')}-{re.sub(r'[^A-Za-z0-9.]+', '-', os.environ[k])}"
                    for k in OMP_ENV if k in os.environ)


def main(argv: list[str] | None = None) -> None:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=8, help="batch rows of the op (a decode step's batch)")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variant = "_".join(v for v in (record.variant_of(ap, args), _env_variant()) if v)
    session = record.start_from_args("omp_threads", ap, args, smoke=args.iters < 20000, argv=argv, variant=variant)
    import torch

    a, w = torch.randn(args.rows, 576), torch.randn(576, 1536)

    def op() -> float:
        t = time.perf_counter()
        for _ in range(args.iters):
            torch.nn.functional.silu(a @ w).sum()
        return time.perf_counter() - t

    pool = ThreadPoolExecutor(1)
    one = [pool.submit(op).result(), pool.submit(op).result()]
    main_after = op()
    worker_after = pool.submit(op).result()
    log.info("torch %s, %d intra-op threads", torch.__version__, torch.get_num_threads())
    log.info("one torch thread:      worker %.2f s, again %.2f s", *one)
    log.info("two torch threads:     main %.2f s, worker again %.2f s", main_after, worker_after)
    slowdown = worker_after / min(one)
    numbers = {"iters": args.iters, "rows": args.rows, "intra_op_threads": torch.get_num_threads(),
               "seconds": {"worker_first": one[0], "worker_again": one[1], "main_after": main_after,
                           "worker_after": worker_after}, "slowdown": slowdown}
    record.finish(session, numbers, record.Ratio(
        "slowdown once a second thread ran torch ops", slowdown, None,
        line=f"slowdown once a second thread ran torch ops: {slowdown:.2f}x "
             "(1.0 = no effect; in-process engines therefore run shards on the stage's thread)"))


if __name__ == "__main__":
    main()

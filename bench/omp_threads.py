"""Why in-process torch work stays on one thread: decode-sized ops on the thread that first ran torch vs after a
second thread has run torch ops too (libgomp then stops spin-waiting between OpenMP regions on a small machine).

    python bench/omp_threads.py            # 20k x (8x576 @ 576x1536, silu, sum): SmolLM2 decode-step sized

Prints seconds for: worker thread first (the only torch thread so far), the same worker again, the main thread
(now a second torch thread), the worker again; and, last, the ratio "after a second torch thread / one thread".
"""
from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("bench.omp_threads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=8, help="batch rows of the op (a decode step's batch)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    print(f"slowdown once a second thread ran torch ops: {worker_after / min(one):.2f}x "
          "(1.0 = no effect; in-process engines therefore run shards on the stage's thread)")


if __name__ == "__main__":
    main()

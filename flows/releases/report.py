"""The run report: one HTML page (a Jinja2 template, flows/releases/templates/report.html.j2) with PNG plots, covering
the night itself (audits, stages, cost, generation, reward terms, filter, evaluation) and its trends over every earlier
night of the same recipe (yield, quarantine rate, reward, accuracy with 95% CIs, seconds and cost per kept example).

Stored as a ``report`` artifact (its key holds the run id; its inputs are the night's artifacts, which is how later
nights find the earlier ones) and logged to the flow's MLflow run. Inside a Prefect flow run, the night's figures and
the trend table are also published as Prefect artifacts (markdown and table), so the Prefect UI's run page shows them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from typing import Any

from data_contracts import ArtifactRef
from infra.catalog.artifacts import ArtifactWriter, KeyParts, ref_from_record
from infra.catalog.records import REPORT_LAYER
from infra.engine.context import RunContext, logger

log = logging.getLogger("rlt")
TERMS = ("reward", "r_ss", "r_kl", "answer_logprob_mean", "kl_mean", "format_penalty")
TEMPLATE = "report.html.j2"
# rlt-method.md section 6, Table 1 (accuracy %, as reported; 17K Bespoke-Stratos questions, Qwen2.5-Instruct students)
PAPER_TABLE = {
    "Qwen2.5-7B-Instruct": {"aime24": 10.0, "math500": 74.2, "gpqa_diamond": 33.3},
    "Bespoke-7B (R1 traces)": {"aime24": 20.0, "math500": 82.0, "gpqa_diamond": 37.8},
    "RLT-7B": {"aime24": 23.3, "math500": 82.8, "gpqa_diamond": 42.4},
    "Bespoke-32B (R1 traces)": {"aime24": 63.3, "math500": 93.0, "gpqa_diamond": 58.1},
    "RLT-32B": {"aime24": 66.7, "math500": 93.4, "gpqa_diamond": 59.6},
}
HISTORY_COLUMNS = ("night", "run", "status", "problems", "quarantine rate", "yield", "kept", "rows reused",
                   "reward", "reward student", "accuracy [95% CI]", "wall s / kept", "cost / kept")


def paper_comparison(ours: dict[str, dict[str, float]]) -> dict | None:
    """Our pass@1 (%) beside the paper's rows, for the paper benchmarks we ran (None if none)."""
    benches = [b for b in ("aime24", "math500", "gpqa_diamond") if any(b in v for v in ours.values())]
    if not benches:
        return None
    rows = []
    for label, vals in [*((f"ours: {k}", v) for k, v in ours.items()), *PAPER_TABLE.items()]:
        cells = [vals.get(b) for b in benches]
        overall = sum(cells) / 3 if len(benches) == 3 and None not in cells else None
        rows.append((label, [_fmt(c, "{:.1f}") for c in cells], _fmt(overall, "{:.2f}")))
    return {"benchmarks": benches, "rows": rows}


def _fmt(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- figures of one night, from its artifacts' records (no data scans) ------------------------------------------
def _stats(recs: dict, keys: dict[str, str], name: str) -> dict:
    rec = recs.get(keys.get(name, ""))
    return json.loads(rec["stats_json"] or "{}") if rec else {}


def reward_student_of(rec: dict | None) -> str | None:
    """Which student a ledger's reward read with (rewards of nights with different students are not comparable):
    ``baseline <key>`` (``reward_student: baseline``, the night's distill[reference]) or ``model <digest>``."""
    if not rec:
        return None
    baseline = json.loads(rec["inputs_json"] or "{}").get("reward_student")
    student = json.loads(rec["models_json"] or "{}").get("student")
    return f"baseline {baseline[:12]}" if baseline else f"model {student[:12]}" if student else None


def night_figures(ctx: RunContext, run_id: str, keys: dict[str, str], costs: dict | None) -> dict:
    """Headline figures of one night: ``keys`` maps the night's output names (problems, distill_set, ...) to
    artifact keys; ``costs`` is its ``costs_by_run`` row (None on catalogs without cost records)."""
    recs = ctx.reader.artifacts(keys.values())
    p, d = _stats(recs, keys, "problems"), _stats(recs, keys, "distill_set")
    s, g = _stats(recs, keys, "scored_explanations"), _stats(recs, keys, "explanations")
    ev = _stats(recs, keys, "eval_distilled").get("benchmarks") or {}
    rows_in = p.get("rows_in")
    costs = costs or {}
    return {"run_id": run_id, "problems": p.get("problems"),
            "quarantine_rate": (p.get("quarantined", 0) / rows_in) if rows_in else None,
            "yield": d.get("yield"), "kept": d.get("kept"), "rows_reused": g.get("rows_reused"),
            "explanations": (recs.get(keys.get("explanations", "")) or {}).get("num_rows"),
            **{t: s.get(f"{t}_mean") for t in ("reward", "r_ss", "r_kl", "format_penalty")},
            "reward_student": reward_student_of(recs.get(keys.get("scored_explanations", ""))),
            "accuracy": {b: (v["pass@1"], v["ci_low"], v["ci_high"]) for b, v in ev.items()},
            "wall_s_per_kept": costs.get("wall_s_per_kept"), "cost_per_kept": costs.get("cost_per_kept"),
            "currency": costs.get("currency") or ""}


def _costs_by_run(ctx: RunContext) -> dict[str, dict]:
    try:
        return {r["run_id"]: r for r in ctx.reader.rows("SELECT * FROM costs_by_run")}
    except Exception as exc:   # an older catalog: no cost records
        log.debug("costs_by_run unavailable: %s", exc)
        return {}


def history(ctx: RunContext, recipe: str, current: dict, costs: dict[str, dict]) -> list[dict]:
    """Every earlier night of ``recipe`` (found through their report artifacts, whose inputs are the night's
    artifacts), oldest first, then this night."""
    rows = ctx.reader.rows(
        "SELECT a.run_id, a.inputs_json, r.status, r.ts FROM artifacts_committed a JOIN runs_latest r "
        "ON r.run_id = a.run_id WHERE a.name = 'report' AND r.recipe = ? AND a.run_id <> ? ORDER BY r.ts",
        [recipe, current["run_id"]])
    nights = []
    for r in rows:
        f = night_figures(ctx, r["run_id"], json.loads(r["inputs_json"]), costs.get(r["run_id"]))
        nights.append(dict(f, status=r["status"], ts=r["ts"]))
    return [*nights, current]


def _accuracy_cell(acc: dict) -> str:
    return "; ".join(f"{b} {p:.3f} [{lo:.3f}, {hi:.3f}]" for b, (p, lo, hi) in sorted(acc.items())) or "-"


def history_rows(nights: list[dict]) -> list[dict]:
    out = []
    for n in nights:
        cells = {"night": str(n.get("ts") or "")[:16] or "this run", "run": n["run_id"][-6:],
                 "status": n.get("status") or "", "problems": _fmt(n["problems"], "{:d}"),
                 "quarantine rate": _fmt(n["quarantine_rate"], "{:.1%}"), "yield": _fmt(n["yield"], "{:.1%}"),
                 "kept": _fmt(n["kept"], "{:d}"), "rows reused": _fmt(n["rows_reused"], "{:d}"),
                 "reward": _fmt(n["reward"], "{:.3f}"), "reward student": n.get("reward_student") or "-",
                 "accuracy [95% CI]": _accuracy_cell(n["accuracy"]),
                 "wall s / kept": _fmt(n["wall_s_per_kept"], "{:.2f}"),
                 "cost / kept": _fmt(n["cost_per_kept"], "{:.6f}") + (f" {n['currency']}" if n["cost_per_kept"]
                                                                       is not None else "")}
        out.append({"cells": cells, "current": n.get("current", False)})
    return out


def _trends_plot(nights: list[dict], path: str) -> None:
    """One row of small multiples over the nights: yield, quarantine rate, reward, accuracy (95% CI), wall seconds
    and cost per kept example."""
    plt = _plt()
    x = list(range(1, len(nights) + 1))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6))
    for ax, key, title in zip(axes.flat, ("yield", "quarantine_rate", "reward", None, "wall_s_per_kept",
                                          "cost_per_kept"),
                              ("filter yield", "quarantine rate", "mean RLT reward", "pass@1 (95% CI)",
                               "wall seconds per kept example", "cost per kept example")):
        if key is None:
            for bench in sorted({b for n in nights for b in n["accuracy"]}):
                pts = [(i, n["accuracy"][bench]) for i, n in zip(x, nights) if bench in n["accuracy"]]
                ax.errorbar([i for i, _ in pts], [a[0] for _, a in pts],
                            yerr=[[a[0] - a[1] for _, a in pts], [a[2] - a[0] for _, a in pts]],
                            marker="o", capsize=3, label=bench)
            ax.set_ylim(-0.02, 1.02)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        else:
            pts = [(i, n[key]) for i, n in zip(x, nights) if n.get(key) is not None]
            ax.plot([i for i, _ in pts], [v for _, v in pts], marker="o", color="#4c72b0")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("night")
        ax.set_xticks(x if len(x) <= 15 else x[:: max(1, len(x) // 10)])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- this night's sections ---------------------------------------------------------------------------------------
def _reward_plot(ctx: RunContext, ref: ArtifactRef, path: str) -> dict:
    import pyarrow as pa

    batches = list(ctx.reader.scan(ref.name, ref.key, list(TERMS)))
    t = pa.Table.from_batches(batches).to_pydict() if batches else {}
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    stats = {}
    for ax, term in zip(axes.flat, TERMS):
        vals = [v for v in t.get(term, []) if v is not None]
        ax.hist(vals, bins=20, color="#4c72b0")
        ax.set_title(term)
        if vals:
            stats[term] = sum(vals) / len(vals)
    fig.suptitle(f"RLT reward terms ({len(t.get('reward', []))} explanations)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return stats


def _bar_plot(labels: list[str], values: list[float], title: str, ylabel: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(labels, values, color="#55a868")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _accuracy_history(ctx: RunContext) -> dict[str, list[tuple[str, str, float]]]:
    """benchmark -> [(timestamp, label, pass@1)] over every evaluate artifact in the catalog."""
    hist: dict[str, list[tuple[str, str, float]]] = {}
    for a in ctx.reader.rows("SELECT ts, stats_json FROM lake.main.artifacts WHERE stage = 'evaluate' ORDER BY ts"):
        st = json.loads(a["stats_json"] or "{}")
        for bench, s in (st.get("benchmarks") or {}).items():
            hist.setdefault(bench, []).append((str(a["ts"])[:16], st.get("label", ""), s["pass@1"]))
    return {b: sorted(v) for b, v in hist.items()}


def _history_plot(hist: dict, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for bench, pts in hist.items():
        for label in sorted({p[1] for p in pts}):
            sel = [p for p in pts if p[1] == label]
            ax.plot(range(len(sel)), [p[2] for p in sel], marker="o", label=f"{bench} [{label}]")
    ax.set_xlabel("evaluation (oldest -> newest)")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cost_rows(ctx: RunContext) -> tuple[list[dict], dict | None]:
    """This run's cost: one row per stage (``costs_by_stage``) and its totals with per-kept-example figures
    (``costs_by_run``; None if the catalog has no such view yet). Cached stages cost nothing and have no row."""
    stages = ctx.reader.rows("SELECT * FROM costs_by_stage WHERE run_id = ? ORDER BY ts", [ctx.run_id])
    total = ctx.reader.rows("SELECT * FROM costs_by_run WHERE run_id = ?", [ctx.run_id])
    return stages, (total[0] if total else None)


COST_COLUMNS = ("stage", "wall s", "CPU s", "GPU s", "peak RSS MB", "peak GPU MB", "tokens in", "tokens out",
                "forward tokens", "rows", "cost")


def cost_section(ctx: RunContext) -> dict:
    """Seconds, memory, tokens (and money where priced) per stage, then the night's totals per kept example."""
    try:
        stages, total = cost_rows(ctx)
    except Exception as exc:   # an older catalog without the cost relation: say so, never fail the report
        return {"error": str(exc)[:200] or type(exc).__name__, "columns": COST_COLUMNS, "stages": [], "summary": ""}
    cur = str((total or {}).get("currency") or "")
    rows = []
    for r in stages:
        name = r["stage"] + (f"[{r['label']}]" if r["label"] else "") + (f" ({r['failed']} failed)" if r["failed"]
                                                                          else "")
        rows.append([name, _fmt(r["wall_s"]), _fmt(r["cpu_s"]), _fmt(r["gpu_s"]), _fmt(r["peak_rss_mb"], "{:.0f}"),
                     _fmt(r["peak_gpu_mb"], "{:.0f}"), *(_fmt(r[k], "{:d}") for k in
                                                         ("tokens_in", "tokens_out", "forward_tokens", "rows")),
                     _fmt(r["cost"], "{:.4f}") + (f" {cur}" if r["cost"] is not None else "")])
    summary = ""
    if total is not None:
        t, kept = total, total["kept"]
        per = (f"{kept} kept examples (distill set {str(t['distill_set'])[:12]}): "
               f"{_fmt(t['wall_s_per_kept'], '{:.3f}')}"
               f" wall s, {_fmt(t['cpu_s_per_kept'], '{:.3f}')} CPU s, {_fmt(t['gpu_s_per_kept'], '{:.3f}')} GPU s, "
               f"{_fmt(t['forward_tokens_per_kept'], '{:.0f}')} forward tokens per kept example"
               + (f", {_fmt(t['cost_per_kept'], '{:.6f}')} {cur} each" if t["cost"] is not None else "")
               if kept else "no distill set in this run")
        money = (f", {t['cost']:.4f} {cur}" if t["cost"] is not None else
                 " (no prices set: recipe costs: or RLT_PRICE_*)")
        unknown = (f" Token totals leave out {t['stages_without_tokens']} stage(s) with a run that recorded no "
                   "token counts (a run that failed before counting)." if t["stages_without_tokens"] else "")
        summary = (f"This night: {_fmt(t['wall_s'])} wall s, {_fmt(t['cpu_s'])} CPU s, {_fmt(t['gpu_s'])} GPU s, "
                   f"{t['forward_tokens']} forward tokens{money}; {per}.{unknown}")
    return {"error": "", "columns": COST_COLUMNS, "stages": rows, "summary": summary}


def _night_table(f: dict, gen: dict | None) -> list[tuple[str, str]]:
    rows = [("problems", _fmt(f["problems"], "{:d}")), ("quarantine rate", _fmt(f["quarantine_rate"], "{:.1%}")),
            ("explanations", _fmt(f["explanations"], "{:d}")),
            ("rows reused from earlier nights", _fmt(f["rows_reused"], "{:d}")),
            ("filter yield", _fmt(f["yield"], "{:.1%}")), ("kept examples", _fmt(f["kept"], "{:d}")),
            ("mean reward", _fmt(f["reward"], "{:.3f}")), ("reward's student", f.get("reward_student") or "-"),
            ("accuracy [95% CI]", _accuracy_cell(f["accuracy"])),
            ("wall s per kept example", _fmt(f["wall_s_per_kept"], "{:.2f}")),
            ("cost per kept example", _fmt(f["cost_per_kept"], "{:.6f}") + (f" {f['currency']}" if
                                                                            f["cost_per_kept"] is not None else ""))]
    return rows


def render(context: dict) -> str:
    """The page, from the Jinja2 template (autoescaped)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)


def _prefect_artifacts(recipe: str, run_id: str, night: list[tuple[str, str]], hist: list[dict],
                       audits: dict | None) -> None:
    """The night's figures (markdown) and the trend table as Prefect artifacts of the flow run (Prefect UI)."""
    import sys

    if "prefect" not in sys.modules:
        return
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return
        slug = re.sub(r"[^a-z0-9-]+", "-", recipe.lower()).strip("-") or "recipe"
        md = [f"### rlt-factory night {run_id} (recipe {recipe})", "", "| figure | value |", "|---|---|",
              *(f"| {k} | {v} |" for k, v in night)]
        if audits is not None:
            md += ["", f"**audits**: {'all passed' if audits.get('passed') else 'FAILED'}"
                       f" (alias {audits.get('alias')})", "", "| audit | figure | bound | result |",
                   "|---|---|---|---|",
                   *(f"| {a.get('name')} | {a.get('figure')} | {a.get('bound')} | "
                     f"{'pass' if a.get('passed') else 'FAIL'} |" for a in audits.get("results", []))]
        create_markdown_artifact("\n".join(md), key=f"rlt-{slug}-night", description=f"night {run_id}")
        create_table_artifact([r["cells"] for r in hist], key=f"rlt-{slug}-trends",
                              description=f"every night of recipe {recipe}, oldest first")
    except Exception as exc:   # the report itself must never fail on the UI side
        log.warning("report: could not publish Prefect artifacts: %s", exc)


def write_report(ctx: RunContext, out: dict[str, Any], plans: list, recipe_name: str,
                 audits: dict | None = None) -> ArtifactRef:
    t0 = time.time()
    runs = ctx.reader.rows("SELECT * FROM lake.main.stage_runs WHERE run_id = ? ORDER BY ts", [ctx.run_id])
    tmp = tempfile.mkdtemp(prefix="rlt-report-")
    images: list[str] = []
    keys = {k: v.key for k, v in out.items() if isinstance(v, ArtifactRef)}
    costs = _costs_by_run(ctx)
    current = dict(night_figures(ctx, ctx.run_id, keys, costs.get(ctx.run_id)), current=True, status="this run")
    nights = history(ctx, recipe_name, current, costs)
    if len(nights) > 1:
        _trends_plot(nights, os.path.join(tmp, "trends.png"))
        images.append("trends.png")
    stages = [dict(r, name=r["stage"] + (f"[{r['label']}]" if r["label"] else "")) for r in runs]
    secs: dict[str, float] = {}
    for r in runs:
        secs[r["stage"]] = secs.get(r["stage"], 0.0) + (r["seconds"] or 0.0)
    if secs:
        _bar_plot(list(secs), list(secs.values()), "seconds per stage (this run)", "s",
                  os.path.join(tmp, "seconds.png"))
        images.append("seconds.png")
    generation = ""
    gen = ctx.reader.artifact(keys["explanations"]) if "explanations" in keys else None
    if gen:
        g = json.loads(gen["stats_json"])
        generation = (f"{gen['num_rows']} explanations ({g.get('rows_reused', 0)} reused from earlier nights), "
                      f"{g.get('prompt_tokens', 0)} prompt tokens, {g.get('completion_tokens', 0)} completion "
                      f"tokens, {g.get('finish_stop', 0)} stopped by EOS.")
    reward_means = {}
    if "scored_explanations" in out:
        reward_means = _reward_plot(ctx, out["scored_explanations"], os.path.join(tmp, "reward_terms.png"))
        images.append("reward_terms.png")
    if "distill_set" in keys:
        st = json.loads(ctx.reader.artifact(keys["distill_set"])["stats_json"])
        reasons = {k.removeprefix("reason."): v for k, v in st.items() if k.startswith("reason.")}
        if reasons:
            _bar_plot(list(reasons), list(reasons.values()), f"filter decisions (yield {st.get('yield', 0):.0%})",
                      "candidates", os.path.join(tmp, "filter.png"))
            images.append("filter.png")
    evaluation, ours = [], {}
    for key in ("eval_base", "eval_distilled", "eval_reference"):
        if key in keys:
            st = json.loads(ctx.reader.artifact(keys[key])["stats_json"])
            ours[st.get("label", key)] = {b: 100 * s["pass@1"] for b, s in st.get("benchmarks", {}).items()}
            evaluation += [dict(label=st.get("label"), benchmark=b, pass1=s["pass@1"], ci_low=s["ci_low"],
                                ci_high=s["ci_high"], n_items=s["items"], k=s["k"], sampled=s.get("sampled", {}),
                                greedy=s.get("greedy"), warning=s.get("warning"))
                           for b, s in st.get("benchmarks", {}).items()]
    gains = {}
    if "eval_distilled" in keys and "eval_reference" in keys:
        from flows.releases.baseline import gains_over_baseline

        gains = gains_over_baseline(ctx.reader, keys["eval_distilled"], keys["eval_reference"])
    acc = _accuracy_history(ctx)
    if acc:
        _history_plot(acc, os.path.join(tmp, "accuracy.png"))
        images.append("accuracy.png")
    missing = ctx.tracker.pending()
    night = _night_table(current, gen)
    hist = history_rows(nights)
    sections = [("audits", "Audits")] if audits is not None else []
    sections += [("night", "This night"), ("trends", "Trends"), ("stages", "Stages"), ("cost", "Cost")]
    sections += [("generation", "Generation")] if generation else []
    sections += [("reward", "Reward")] if reward_means else []
    sections += [("evaluation", "Evaluation")] if evaluation else []
    sections += [("plan", "Plan")]
    page = render(dict(
        recipe=recipe_name, run_id=ctx.run_id, night=None, toc=sections, audits=audits,
        pending=", ".join(f"{v} {k}" for k, v in missing.items()) if missing else "",
        night_table=night, history=hist, history_columns=HISTORY_COLUMNS, stages=stages, images=images,
        cost=cost_section(ctx), generation=generation, reward_means=reward_means, evaluation=evaluation, gains=gains,
        paper=paper_comparison(ours),
        plan=[{"name": p.stage + (f"[{p.label}]" if p.label else ""), "status": p.status, "reason": p.reason}
              for p in plans]))
    with open(os.path.join(tmp, "index.html"), "w") as f:
        f.write(page)
    _prefect_artifacts(recipe_name, ctx.run_id, night, hist, audits)
    parts = KeyParts("report", "1", {"run_id": ctx.run_id}, inputs=keys)
    writer = ArtifactWriter(ctx.store, "report", parts.key(), parts, ctx.run_id, layer=REPORT_LAYER)
    names = ctx.store.put_dir(tmp, writer.uri)   # the key holds the run id: no other run writes here
    writer.add_files([f"{writer.uri}/{n}" for n in names])
    writer.stats.update({"html": f"{writer.uri}/index.html", "seconds": time.time() - t0, "nights": len(nights)})
    ctx.catalog.commit([writer.commit_spec()], message="commit report")
    ref = ref_from_record(ctx.catalog.artifact(writer.key))
    for n in names:
        ctx.tracker.log_artifact(ctx.mlflow_parent, os.path.join(tmp, n), "report")
    logger().info("report: %s/index.html (%d night(s) of recipe %s)", writer.uri, len(nights), recipe_name)
    return ref

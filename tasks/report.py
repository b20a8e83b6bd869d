"""The run report: HTML with PNG plots (reward terms, filter yield, time and tokens per stage, accuracy by night).

Stored as a ``report`` artifact and logged to the flow's MLflow run.
"""
from __future__ import annotations

import html
import json
import os
import tempfile
import time
from typing import Any

from data_contracts import ArtifactRef
from infra.artifacts import ArtifactWriter, KeyParts, ref_from_record
from tasks.common import RunContext, logger

TERMS = ("reward", "r_ss", "r_kl", "answer_logprob_mean", "kl_mean", "format_penalty")
# rlt-method.md section 6, Table 1 (accuracy %, as reported; 17K Bespoke-Stratos questions, Qwen2.5-Instruct students)
PAPER_TABLE = {
    "Qwen2.5-7B-Instruct": {"aime24": 10.0, "math500": 74.2, "gpqa_diamond": 33.3},
    "Bespoke-7B (R1 traces)": {"aime24": 20.0, "math500": 82.0, "gpqa_diamond": 37.8},
    "RLT-7B": {"aime24": 23.3, "math500": 82.8, "gpqa_diamond": 42.4},
    "Bespoke-32B (R1 traces)": {"aime24": 63.3, "math500": 93.0, "gpqa_diamond": 58.1},
    "RLT-32B": {"aime24": 66.7, "math500": 93.4, "gpqa_diamond": 59.6},
}


def paper_comparison(ours: dict[str, dict[str, float]]) -> str:
    """An HTML table of our pass@1 (%) beside the paper's rows, for the paper benchmarks we ran ('' if none)."""
    benches = [b for b in ("aime24", "math500", "gpqa_diamond") if any(b in v for v in ours.values())]
    if not benches:
        return ""
    head = "".join(f"<th>{b}</th>" for b in benches) + "<th>overall</th>"
    rows = []
    for label, vals in [*((f"ours: {k}", v) for k, v in ours.items()), *PAPER_TABLE.items()]:
        cells = [vals.get(b) for b in benches]
        overall = sum(cells) / 3 if len(benches) == 3 and None not in cells else None
        rows.append(f"<tr><td>{html.escape(label)}</td>" + "".join(
            f"<td>{c:.1f}</td>" if c is not None else "<td>-</td>" for c in cells)
            + (f"<td>{overall:.2f}</td>" if overall is not None else "<td>-</td>") + "</tr>")
    return (f"<h2>Beside the paper (Table 1, accuracy %)</h2><table><tr><th>model</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reward_plot(ctx: RunContext, ref: ArtifactRef, path: str) -> dict:
    import pyarrow as pa

    batches = list(ctx.catalog.scan(ref.name, ref.key, list(TERMS)))
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
    """benchmark -> [(timestamp, label, pass@1)] over every evaluate artifact in the manifest."""
    hist: dict[str, list[tuple[str, str, float]]] = {}
    for a in ctx.catalog.rows("SELECT ts, stats_json FROM lake.main.artifacts WHERE stage = 'evaluate' ORDER BY ts"):
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


def _audit_section(audits: dict) -> str:
    """Write-audit-publish outcome: each audit's figure against its bound, and whether the alias moved."""
    alias = html.escape(str(audits.get("alias")))
    if audits.get("passed"):
        moved = {True: f"published as <b>{alias}</b>", "unchanged": f"<b>{alias}</b> already pointed here"}.get(
            audits.get("published"), f"not published (<b>{alias}</b> unchanged: publishing is off)")
        head = f"<p>Every audit passed; {moved}.</p>"
    else:
        head = (f"<p style='color:#a00'><b>Audit failed</b>: <b>{alias}</b> was not moved; the previous release "
                "stays in place and this run is marked failed.</p>")
    rows = "".join(f"<tr><td>{html.escape(str(a.get('name')))}</td><td>{html.escape(str(a.get('figure')))}</td>"
                   f"<td>{html.escape(str(a.get('bound')))}</td><td>{'pass' if a.get('passed') else '<b>FAIL</b>'}"
                   f"</td><td>{html.escape(str(a.get('detail') or ''))}</td></tr>" for a in audits.get("results", []))
    table = ("<table><tr><th>audit</th><th>figure</th><th>bound</th><th>result</th><th>detail</th></tr>"
             f"{rows}</table>") if rows else "<p>No audits declared in the recipe.</p>"
    return f"<h2>Audits</h2>{head}{table}"


def write_report(ctx: RunContext, out: dict[str, Any], plans: list, recipe_name: str,
                 audits: dict | None = None) -> ArtifactRef:
    t0 = time.time()
    runs = ctx.catalog.rows("SELECT * FROM lake.main.stage_runs WHERE run_id = ? ORDER BY ts", [ctx.run_id])
    tmp = tempfile.mkdtemp(prefix="rlt-report-")
    sections, images = [], []
    if audits is not None:
        sections.append(_audit_section(audits))
    missing = ctx.tracker.pending()
    if missing:   # MLflow was unreachable: the data is committed, its tracking waits in the journal
        sections.append(f"<p style='color:#a00'><b>Tracked incompletely</b>: MLflow could not be reached during this "
                        f"run; missing so far: {html.escape(', '.join(f'{v} {k}' for k, v in missing.items()))}. "
                        f"<code>rlt tracking relog {html.escape(ctx.run_id)}</code> replays it.</p>")
    names = [r["stage"] + (f"[{r['label']}]" if r["label"] else "") for r in runs]
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{r['status']}</td><td>{r['seconds']:.1f}</td>"
                   f"<td><code>{r['artifact_key'][:12]}</code></td></tr>" for n, r in zip(names, runs))
    sections.append(f"<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th><th>artifact</th></tr>"
                    f"{rows}</table>")
    secs: dict[str, float] = {}
    for r in runs:
        secs[r["stage"]] = secs.get(r["stage"], 0.0) + (r["seconds"] or 0.0)
    if secs:
        _bar_plot(list(secs), list(secs.values()), "seconds per stage (this run)", "s", os.path.join(tmp, "seconds.png"))
        images.append("seconds.png")
    gen = ctx.catalog.artifact(out["explanations"].key) if "explanations" in out else None
    if gen:
        g = json.loads(gen["stats_json"])
        sections.append(f"<h2>Generation</h2><p>{gen['num_rows']} explanations, {g.get('prompt_tokens', 0)} prompt "
                        f"tokens, {g.get('completion_tokens', 0)} completion tokens, {g.get('finish_stop', 0)} "
                        f"stopped by EOS.</p>")
    if "scored_explanations" in out:
        means = _reward_plot(ctx, out["scored_explanations"], os.path.join(tmp, "reward_terms.png"))
        images.append("reward_terms.png")
        sections.append("<h2>Reward terms (means)</h2><p>" + ", ".join(f"{k}={v:.3f}" for k, v in means.items())
                        + "</p>")
    if "distill_set" in out:
        st = json.loads(ctx.catalog.artifact(out["distill_set"].key)["stats_json"])
        reasons = {k.removeprefix("reason."): v for k, v in st.items() if k.startswith("reason.")}
        if reasons:
            _bar_plot(list(reasons), list(reasons.values()), f"filter decisions (yield {st.get('yield', 0):.0%})",
                      "candidates", os.path.join(tmp, "filter.png"))
            images.append("filter.png")
    hist = _accuracy_history(ctx)
    if hist:
        _history_plot(hist, os.path.join(tmp, "accuracy.png"))
        images.append("accuracy.png")
        items, ours = [], {}
        for key in ("eval_base", "eval_distilled"):
            if key in out:
                st = json.loads(ctx.catalog.artifact(out[key].key)["stats_json"])
                ours[st.get("label", key)] = {b: 100 * s["pass@1"] for b, s in st.get("benchmarks", {}).items()}
                for b, s in st.get("benchmarks", {}).items():
                    items.append(f"<tr><td>{st.get('label')}</td><td>{b}</td><td>{s['pass@1']:.3f}</td>"
                                 f"<td>[{s['ci_low']:.3f}, {s['ci_high']:.3f}]</td><td>{s['items']}x{s['k']}</td></tr>")
        sections.append("<h2>Evaluation</h2><table><tr><th>model</th><th>benchmark</th><th>pass@1</th>"
                        "<th>95% CI</th><th>items x k</th></tr>" + "".join(items) + "</table>")
        sections.append(paper_comparison(ours))
    plan_rows = "".join(f"<tr><td>{p.stage}{'[' + p.label + ']' if p.label else ''}</td><td>{p.status}</td>"
                        f"<td>{html.escape(p.reason)}</td></tr>" for p in plans)
    sections.append(f"<h2>Plan at start</h2><table>{plan_rows}</table>")
    body = "".join(sections) + "".join(f'<p><img src="{i}"></p>' for i in images)
    page = (f"<html><head><meta charset='utf-8'><title>rlt-factory {html.escape(recipe_name)} {ctx.run_id}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 8px}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h1>rlt-factory run {ctx.run_id}</h1><p>recipe <b>{html.escape(recipe_name)}</b></p>{body}</body></html>")
    with open(os.path.join(tmp, "index.html"), "w") as f:
        f.write(page)
    parts = KeyParts("report", "1", {"run_id": ctx.run_id}, inputs={k: v.key for k, v in out.items()
                                                                   if isinstance(v, ArtifactRef)})
    writer = ArtifactWriter(ctx.store, "report", parts.key(), parts, ctx.run_id)
    names = ctx.store.put_dir(tmp, writer.uri)   # the key holds the run id: no other run writes here
    writer.add_files([f"{writer.uri}/{n}" for n in names])
    writer.stats.update({"html": f"{writer.uri}/index.html", "seconds": time.time() - t0})
    ctx.catalog.commit([writer.commit_spec()], message="commit report")
    ref = ref_from_record(ctx.catalog.artifact(writer.key))
    for n in names:
        ctx.tracker.log_artifact(ctx.mlflow_parent, os.path.join(tmp, n), "report")
    logger().info("report: %s/index.html", writer.uri)
    return ref

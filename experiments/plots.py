"""The evidence's plots, drawn from its results (``experiments/evidence.py``) or from the committed records
(``scripts/render_plots.py``): the same functions either way, so a plot in docs/results.md shows what its record says.

- :func:`students`: every student's held-out accuracy, greedy and avg@k side by side, with their 95% CIs; beside it,
  the reward bins' student accuracy against the bin's mean reward (claim 3) when the run has bins.
- :func:`grpo_runs`: the per-step reward terms of several GRPO runs on shared axes (the settings runs of issue 24
  against the main run), each a running mean over a tenth of the run.
"""
from __future__ import annotations

from typing import Optional

# the reward terms compared across GRPO runs, with their axis labels
RUN_TERMS = (("reward", "reward (r_SS - r_KL - format)"), ("r_ss", "r_SS: log P(solution | explanation)"),
             ("r_kl", "r_KL (weighted)"), ("n_explanation_tokens", "explanation tokens"))


def corr_text(qs: dict) -> str:
    """'Pearson r = 0.97 (p = 0.027), Spearman rho = 0.80 (p = 0.20)', or why there is none."""
    if qs["pearson"] is None:
        return "undefined (every bin's student has the same accuracy)"
    (r, pr), (rho, ps) = qs["pearson"], qs["spearman"]
    return f"Pearson r = {r:.2f} (p = {pr:.3g}), Spearman rho = {rho:.2f} (p = {ps:.3g})"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(stats: list[dict]) -> list[list[float]]:
    """Asymmetric error bars (percent) from ``{"mean", "ci95_bootstrap": [lo, hi]}`` statistics."""
    return [[100 * (s["mean"] - s["ci95_bootstrap"][0]) for s in stats],
            [100 * (s["ci95_bootstrap"][1] - s["mean"]) for s in stats]]


def students(results: dict, path: str, title: Optional[str] = None) -> None:
    """Held-out accuracy of the base student and every arm (greedy; avg@k where measured), plus the reward bins."""
    plt = _pyplot()
    bins = results.get("bins")
    fig, axes = plt.subplots(1, 2 if bins else 1, figsize=(12 if bins else 8, 4.2), squeeze=False)
    ax = axes[0][0]
    rows = [("base", results["base_student"]), *results["students"].items()]
    ys = list(range(len(rows)))[::-1]
    greedy = [s["accuracy"] for _, s in rows]
    sampled = [s.get("avg_at_k") for _, s in rows]
    has_sampled = all(s is not None for s in sampled)
    h = 0.38 if has_sampled else 0.7
    ax.barh([y + (h / 2 if has_sampled else 0) for y in ys], [100 * s["mean"] for s in greedy], height=h,
            xerr=_err(greedy), capsize=2, label="greedy")
    if has_sampled:
        k = next((s.get("k") for _, s in rows if s.get("k")), "k")
        ax.barh([y - h / 2 for y in ys], [100 * s["mean"] for s in sampled], height=h, xerr=_err(sampled),
                capsize=2, label=f"avg@{k} (T=0.7)")
    ax.axvline(100 * greedy[0]["mean"], color="grey", lw=0.8, ls="--")
    ax.set_yticks(ys, [name for name, _ in rows], fontsize=8)
    ax.set_xlabel("held-out accuracy, % (95% CI over seeds and items)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="center right")
    if title:
        ax.set_title(title, fontsize=9)
    if bins:
        ax2 = axes[0][1]
        acc = bins["accuracy"]
        ax2.errorbar(bins["mean_reward"], [100 * a for a in acc],
                     yerr=[[100 * (a - c[0]) for a, c in zip(acc, bins["accuracy_ci"])],
                           [100 * (c[1] - a) for a, c in zip(acc, bins["accuracy_ci"])]], marker="o", capsize=3)
        ax2.set_xlabel("mean RLT reward of the bin's explanations")
        ax2.set_ylabel("student accuracy, %")
        ax2.set_title(f"{bins['n_bins']} reward bins: {corr_text(bins)}", fontsize=8)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grpo_runs(runs: dict[str, dict], path: str) -> None:
    """``runs``: label -> a GRPO history (step -> {"rlt/<term>/mean": value}; steps may be strings, as in a record)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(RUN_TERMS), 1, figsize=(8, 2.1 * len(RUN_TERMS)), sharex=True)
    for label, history in runs.items():
        hist = {int(s): h for s, h in history.items()}
        for ax, (term, _) in zip(axes, RUN_TERMS):
            xs = [s for s in sorted(hist) if f"rlt/{term}/mean" in hist[s]]
            if not xs:
                continue
            ys = [hist[s][f"rlt/{term}/mean"] for s in xs]
            k = max(1, len(ys) // 10)
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, label=label)
    for ax, (_, name) in zip(axes, RUN_TERMS):
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title("GRPO reward terms per step (mean over the step's samples; running mean over a tenth of the run)",
                      fontsize=8)
    axes[-1].set_xlabel("GRPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

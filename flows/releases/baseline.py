"""What the night's explanations add over the reference baseline student (``evaluate.baselines: [reference]``):
per benchmark, the distilled student's paired gain over the student distilled on the reference solutions, on the
same items (rlt_core/eval_metrics.py ``paired_difference``: per item, the share of its samples each student got
right). Read from the two evaluations' committed rows; the report shows it, the audit ``min_gain_over_baseline``
gates publishing on it."""
from __future__ import annotations

import json

from infra.catalog.lake import Catalog
from infra.catalog.records import ARTIFACT_COL
from rlt_core.eval_metrics import paired_difference


def item_scores(catalog: Catalog, artifact_key: str, eval_key: str) -> dict[str, float]:
    """item_id -> share of its samples graded correct, in one evaluation (one eval contract) of an artifact."""
    rows = catalog.rows(f"SELECT item_id, avg(CAST(correct AS DOUBLE)) AS score FROM lake.data.eval_results "
                        f"WHERE {ARTIFACT_COL} = ? AND eval_key = ? GROUP BY item_id", [artifact_key, eval_key])
    return {r["item_id"]: float(r["score"]) for r in rows}


def gains_over_baseline(catalog: Catalog, distilled_key: str, baseline_key: str) -> dict[str, dict]:
    """benchmark -> {value, ci_low, ci_high, items, distilled, baseline}: the paired gain (pass@1 points as a
    fraction) of the distilled student over the baseline on every benchmark both evaluated under the same
    sampling (their eval contracts differ only in the model)."""
    def benchmarks(key: str) -> dict:
        rec = catalog.artifact(key)
        return json.loads(rec["stats_json"] or "{}").get("benchmarks", {}) if rec else {}

    ours, base = benchmarks(distilled_key), benchmarks(baseline_key)
    out: dict[str, dict] = {}
    for bench in sorted(set(ours) & set(base)):
        a = item_scores(catalog, distilled_key, ours[bench]["eval_key"])
        b = item_scores(catalog, baseline_key, base[bench]["eval_key"])
        if set(a) & set(b):
            out[bench] = {**paired_difference(a, b), "distilled": ours[bench]["pass@1"],
                          "baseline": base[bench]["pass@1"]}
    return out

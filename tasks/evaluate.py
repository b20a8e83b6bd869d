"""evaluate: a student (checkpoint or model reference) -> per-sample eval results + pass@1 with a CI; with k > 1
samples also avg@k, pass@k and maj@k with CIs (rlt_core/eval_metrics.py), and greedy pass@1 beside them.

Each benchmark's result is keyed by its evaluation contract: model digest, benchmark dataset digest, grader
name@version, prompt template and system prompt, sampling config, k and seeds. A change in any part is a
different result (a different key), never merged into an old one.
"""
from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

from pydantic import Field

from data_contracts import eval_results
from infra.catalog.artifacts import digest
from infra.engine.config import KEY_IF_SET, NOT_IN_KEY, StageConfig
from infra.engine.models import engine_lock, model_and_tokenizer
from infra.engine.stage import Model, StageRun, declare
from rlt_core import benchmarks as bm
from rlt_core import eval_metrics
from rlt_core.generation import GenRequest, HFGenerator, SamplingConfig
from rlt_core.grading import get_grader
from rlt_core.prompts import PromptStyle


class EvaluateConfig(StageConfig):
    benchmarks: list[str] = Field(default_factory=lambda: ["countdown-heldout", "arithmetic-heldout"])
    max_items: Optional[int] = Field(default=50, ge=1, description="first N items of each benchmark")
    k: int = Field(default=1, ge=1, description="samples per item; pass@1 is averaged over them")
    seed: int = 41
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=256)
    system_prompt: Literal["student", "none"] = "student"
    batch_size: Annotated[int, NOT_IN_KEY] = Field(default=8, ge=1)
    include_base: Annotated[bool, NOT_IN_KEY] = Field(default=True, description="also evaluate the base student "
                                                                               "(before distillation)")
    baselines: Annotated[list[Literal["reference"]], NOT_IN_KEY] = Field(
        default_factory=list, description="baseline students evaluated beside the distilled one: `reference` "
        "distils a student on the reference solutions of the same problems with the same distill recipe and budget "
        "(nodes filter/distill/evaluate[reference]); the report shows the distilled student's paired gain over it")
    dtype: Literal["float32", "bfloat16"] = "float32"
    style: PromptStyle = Field(default_factory=PromptStyle)
    # added after keys were recorded: at False it stays out of the key
    greedy: Annotated[bool, KEY_IF_SET] = Field(
        default=False, description="also decode each item greedily (temperature 0, one sample, seed `seed`) beside "
        "the k sampled answers, so the decoding and what the model knows come apart; no-op when sampling is greedy")


def _items(cfg: EvaluateConfig, name: str) -> list[bm.Item]:
    spec = bm.get_benchmark(name)
    if cfg.max_items:
        spec = spec.model_copy(update={"limit": cfg.max_items})
    return bm.benchmark_items(spec, bm.load_benchmark_rows(spec))


def eval_contract(cfg: EvaluateConfig, name: str, items: list[bm.Item], model_digest: str,
                  sampling: Optional[SamplingConfig] = None, k: Optional[int] = None) -> dict:
    """The evaluation contract of one benchmark; ``sampling``/``k`` override the config's (the greedy pass)."""
    spec = bm.get_benchmark(name)
    k = k or cfg.k
    return {"model": model_digest, "benchmark": name,
            "dataset": digest([(i.item_id, i.prompt, i.reference, i.grader_args) for i in items]),
            "grader": get_grader(spec.grader).version_fn(), "template": spec.prompt_template,
            "system_prompt": cfg.style.student_system_prompt if cfg.system_prompt == "student" else "",
            "sampling": (sampling or cfg.sampling).model_dump(mode="json"), "k": k,
            "seeds": [cfg.seed + j for j in range(k)]}


def _prompt(tok, cfg: EvaluateConfig, text: str) -> str:
    msgs = [{"role": "user", "content": text}]
    if cfg.system_prompt == "student":
        msgs.insert(0, {"role": "system", "content": cfg.style.student_system_prompt})
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _sample_and_grade(run: StageRun, gen: HFGenerator, tok, cfg: EvaluateConfig, name: str, items: list[bm.Item],
                      snap, sampling: SamplingConfig, k: int) -> tuple[str, dict, list[dict], list[list[bool]],
                                                                       list[list[Optional[str]]]]:
    """k answers per item under ``sampling``, graded: (eval key, contract, rows, correct, extracted)."""
    contract = eval_contract(cfg, name, items, snap.digest, sampling, k)
    ekey = digest(contract, 20)
    grader = get_grader(items[0].grader) if items else None
    with engine_lock(snap.path):   # the model and its tokenizer are shared per process
        reqs = [GenRequest(f"{it.item_id}#{j}", _prompt(tok, cfg, it.prompt), cfg.seed + j)
                for it in items for j in range(k)]
        results = gen.generate(reqs, sampling)
    run.count_tokens(tokens_in=sum(r.prompt_tokens for r in results),
                     tokens_out=sum(r.completion_tokens for r in results))
    rows: list[dict] = []
    correct: list[list[bool]] = []
    extracted: list[list[Optional[str]]] = []
    for n, it in enumerate(items):
        per, ext = [], []
        for j in range(k):
            res = results[n * k + j]
            g = grader(res.text, it.reference, **it.grader_args)
            per.append(g.correct)
            ext.append(g.extracted)
            rows.append(dict(eval_key=ekey, benchmark=name, item_id=it.item_id, sample_index=j,
                             seed=cfg.seed + j, prompt=it.prompt, response=res.text, extracted=g.extracted,
                             reference=it.reference, correct=g.correct, grader=g.grader,
                             completion_tokens=res.completion_tokens))
        correct.append(per)
        extracted.append(ext)
    return ekey, contract, rows, correct, extracted


def evaluate(run: StageRun, cfg: EvaluateConfig, student_checkpoint: Model) -> dict:
    """Sample k answers per item of every benchmark, grade them, and report pass@1 with a bootstrap CI (with k > 1
    also avg@k, pass@k, maj@k; with ``greedy``, greedy pass@1 beside them). The student is the distill stage's
    checkpoint, or (the ``base`` variant, flows/pipeline.py) its base model."""
    snap = student_checkpoint.snapshot
    model, tok = model_and_tokenizer(snap.path, cfg.dtype)
    gen = HFGenerator(model, tok, cfg.batch_size)
    writer = run.writer()
    summary: dict[str, dict] = {}
    for name in cfg.benchmarks:
        items = _items(cfg, name)
        ekey, contract, rows, correct, extracted = _sample_and_grade(run, gen, tok, cfg, name, items, snap,
                                                                     cfg.sampling, cfg.k)
        if rows:
            writer.write_part(rows)
        mean, lo, hi = bm.pass_at_1(correct)
        summary[name] = {"pass@1": mean, "ci_low": lo, "ci_high": hi, "items": len(items), "k": cfg.k,
                         "eval_key": ekey, "contract": contract,
                         "warning": eval_metrics.small_benchmark_warning(len(items), cfg.k)}
        metrics = {f"{name}.pass_at_1": mean, f"{name}.ci_low": lo, f"{name}.ci_high": hi}
        if cfg.k > 1:
            sampled = eval_metrics.sampled_metrics(correct, extracted)
            summary[name]["sampled"] = sampled
            metrics.update({f"{name}.{m.replace('@', '_at_')}": v["value"] for m, v in sampled.items()})
        if cfg.greedy and cfg.sampling.temperature > 0:
            greedy = cfg.sampling.model_copy(update={"temperature": 0.0})
            gkey, _, grows, gcorrect, _ = _sample_and_grade(run, gen, tok, cfg, name, items, snap, greedy, 1)
            if grows:
                writer.write_part(grows)
            gm, glo, ghi = bm.pass_at_1(gcorrect)
            summary[name]["greedy"] = {"pass@1": gm, "ci_low": glo, "ci_high": ghi, "eval_key": gkey}
            metrics[f"{name}.greedy_pass_at_1"] = gm
        run.log_metrics(metrics)
        run.log.info("evaluate[%s] %s: pass@1 %.3f (95%% CI %.3f-%.3f, %d items x %d)%s", run.label, name, mean, lo,
                     hi, len(items), cfg.k, "".join(
                         f", {m} {v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                         for m, v in summary[name].get("sampled", {}).items())
                     + (f", greedy {summary[name]['greedy']['pass@1']:.3f}" if "greedy" in summary[name] else ""))
        if summary[name]["warning"]:
            run.log.warning("evaluate[%s] %s: %s", run.label, name, summary[name]["warning"])
    paper = [summary[b]["pass@1"] for b in ("aime24", "math500", "gpqa_diamond") if b in summary]
    return {"label": run.label, "benchmarks": summary, "model_digest": snap.digest,
            "overall": sum(paper) / 3 if len(paper) == 3 else None}


STAGE = declare(evaluate, version="1", outputs=(eval_results.CONTRACT,),
                key_names={"student_checkpoint": "model"})   # the key's name for this input (keys stay as they were)


def summary(ctx, ref) -> dict:
    rec = ctx.catalog.artifact(ref.key)
    return json.loads(rec["stats_json"]) if rec else {}

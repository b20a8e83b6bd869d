"""Probe: does a distilled student open an empty thought under greedy decoding? (docs/results.md, section 3)

    python experiments/thought_probe.py --out .scratch/evidence            # every student of that run (~2 min)

For each student of an ``experiments/evidence.py`` run (``<out>/students/<arm>/model``) and each of the run's
held-out evaluation items, greedy decoding of the answer's first tokens says whether the student opens its thought
and closes it at once (an empty thought); one forward pass over the prompt, the thought's opening tag and its
``\n\n`` padding gives the probability of that empty thought (the first token of ``<|end_of_thought|>``). The
students are evaluated greedily (the paper's protocol); this says how much of an arm's accuracy is decided by that
single token rather than by what the explanations taught.

A student whose model is not in the run folder (a run restored from its records: ``evidence.py --restore``) is
named in the record's ``missing`` list, not probed.

Writes ``<out>/thought_probe.json`` and a record (bench/record.py: command, commit, machine load, per-item outcomes,
wall time) to ``<out>/records/thought_probe.json``, published like the run's phase records (``--records``; default
``docs/results/evidence/`` for a ``full``-profile run).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("experiments.thought_probe")


def probe_student(model, tok, prompts: list[str], style, batch: int = 32) -> dict:
    """Greedy decoding of the answer's first tokens: the share of prompts whose thought opens and closes with nothing
    in between; and the mean probability that the thought ends right after its opening tag and ``\n\n``."""
    import torch

    start, end = style.thought_tags
    newline = tok("\n", add_special_tokens=False).input_ids
    opening = tok(start, add_special_tokens=False).input_ids + newline * style.padding.count("\n")
    end_first = tok(end, add_special_tokens=False).input_ids[0]
    n_new = len(opening) + len(tok(end, add_special_tokens=False).input_ids) + 2
    probs: list[float] = []
    empty: list[bool] = []
    for i in range(0, len(prompts), batch):
        enc = [tok(p, add_special_tokens=False).input_ids for p in prompts[i:i + batch]]
        for suffix in ([], opening):
            seqs = [e + suffix for e in enc]
            width = max(map(len, seqs))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            with torch.no_grad():
                if suffix:
                    probs += model(input_ids=ids, attention_mask=mask).logits[:, -1].float().softmax(-1)[
                        :, end_first].tolist()
                else:
                    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
                    for text in tok.batch_decode(out[:, width:], skip_special_tokens=True):
                        empty.append(text.startswith(start) and text[len(start):].lstrip().startswith(end))
    return {"p_empty_thought": sum(probs) / len(probs), "greedy_empty_thought": sum(empty) / len(empty),
            "n": len(probs), "items": {"p_empty_thought": [round(p, 6) for p in probs], "greedy_empty_thought": empty}}


def main(argv: list[str] | None = None) -> None:
    from experiments import evidence as ev

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_run_folder_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rlt_core.modeling import load_causal_lm

    cfg, records = ev.run_folder_records(args.out, args.records, argv)
    session = records.start("thought_probe")
    style, (tok, _) = ev._style(), ev._tokenizer_and_builder(cfg)
    prompts = [ev.student_prompt(tok, it.prompt, style) for it in ev.eval_items(cfg)]
    results, missing = {}, []
    for arm in sorted(_finished_students(args.out)):
        path = os.path.join(args.out, "students", arm, "model")
        if not os.path.isdir(path):   # a run restored from its records (--restore) has the results, not the models
            log.warning("%s: its model %s is not here (a run restored from its records): not probed", arm, path)
            missing.append(arm)
            continue
        results[arm] = probe_student(load_causal_lm(path).eval(), tok, prompts, style, cfg["eval_batch"])
        log.info("%s: P(empty thought) %.3f, greedy empty thought on %.1f%% of %d items", arm,
                 results[arm]["p_empty_thought"], 100 * results[arm]["greedy_empty_thought"], results[arm]["n"])
    with open(os.path.join(args.out, "thought_probe.json"), "w") as f:
        json.dump(results, f, indent=1)
    records.write(session, {"students": results, "missing": missing})


def _finished_students(out: str) -> list[str]:
    """The students of the run's finished phases (``student_*.json``) and any other model under ``students/``."""
    names = {f[len("student_"):-len(".json")] for f in os.listdir(out) if f.startswith("student_") and
             f.endswith(".json")}
    folder = os.path.join(out, "students")
    return sorted(names | (set(os.listdir(folder)) if os.path.isdir(folder) else set()))


if __name__ == "__main__":
    main()

"""Per-sample seeded sampling for GRPO's transformers generation: completions independent of the gang size.

TRL's transformers path samples a rank's whole generation batch from the process RNG (``torch.multinomial``), so
the completions of a step depend on how the step's batch was split over ranks: 2 ranks x b completions are not the
completions of 1 rank x 2b, nor those of a run resumed from a checkpoint. With :class:`PerSampleSeeds` each
completion draws from its own generator, seeded from ``(seed, optimizer step, global sample index)``; the global
index is ``process_index * local_batch + row``, which is the sample's position in the step's generation batch
whatever the number of ranks (accelerate hands rank r the r-th contiguous slice of it). The token is the Gumbel-max
choice ``argmax(z + g)`` of the generate stage's sampler (:func:`rlt_core.generation.sample_rows`), an exact draw
from ``softmax(z)`` where ``z`` are the scores after temperature and top-k/top-p; generate's own sampler is then
handed a one-point distribution, so its RNG draw no longer matters.

Cost: one CPU ``torch.rand(vocab)`` per sequence per generated token (a loop over the batch rows), moved to the
scores' device. Opt-in through ``TeacherGRPOConfig.per_sample_seeds``; not with vLLM, whose samplers are its own.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Optional, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback

log = logging.getLogger(__name__)


def sample_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of the generation at optimizer step ``step``."""
    digest = hashlib.blake2b(f"{seed}/{step}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class GumbelChoice(LogitsProcessor):
    """Picks each row's next token from its own generator and returns scores that keep only it.

    The draw is :func:`rlt_core.generation.sample_rows` (Gumbel-max over logits / temperature after top-p; the
    sampler of the generate stage), after top-k when set; the generation config's own warpers then see a single
    finite score and keep it.

    Args:
        seeds: one seed per batch row (CPU generators: the same numbers on any device).
        temperature, top_k, top_p: the sampling settings (0 or None: off; temperature 0: greedy).
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None):
        from rlt_core.generation import SamplingConfig

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.top_k = int(top_k or 0)
        self.sampling = SamplingConfig(temperature=float(temperature if temperature is not None else 1.0),
                                       top_p=float(top_p if top_p is not None else 1.0), max_new_tokens=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from rlt_core.generation import sample_rows

        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.generators)} seeds")
        z = scores.float()
        if 0 < self.top_k < z.shape[-1]:
            kth = z.topk(self.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        choice = sample_rows(z, self.generators, self.sampling).unsqueeze(-1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice, 0.0)


class PerSampleSeeds(TrainerCallback):
    """Routes the policy's ``generate`` through :class:`GumbelChoice` while training (TRL's ``GRPOTrainer`` calls
    ``generate`` on the unwrapped policy: this very object, PEFT or not, under DDP, FSDP2 and ZeRO-3 alike).

    Args:
        trainer: the ``GRPOTrainer`` (its ``accelerator.process_index`` and ``state.global_step``).
        policy: the object TRL generates with (``trainer.model``).
        seed: the run's seed (``RuntimeSettings.seed``).
    """

    def __init__(self, trainer, policy, seed: int):
        self.trainer, self.policy, self.seed = trainer, policy, int(seed)

    def _generate(self, original):
        def generate(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            gen = kwargs.get("generation_config") or getattr(self.policy, "generation_config", None)
            n = int(ids.shape[0])
            offset = self.trainer.accelerator.process_index * n   # every rank generates the same number
            step = int(self.trainer.state.global_step)
            chooser = GumbelChoice([sample_seed(self.seed, step, offset + i) for i in range(n)],
                                   getattr(gen, "temperature", 1.0), getattr(gen, "top_k", None),
                                   getattr(gen, "top_p", None))
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), chooser])
            return original(*args, **kwargs)

        return generate

    def on_train_begin(self, args, state, control, **kwargs):
        if "generate" not in vars(self.policy):
            self.policy.generate = self._generate(self.policy.generate)

    def on_train_end(self, args, state, control, **kwargs):
        vars(self.policy).pop("generate", None)


__all__ = ["GumbelChoice", "PerSampleSeeds", "sample_seed"]

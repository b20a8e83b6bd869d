"""Batched per-token log-probs at chosen positions of many sequences, for any HF causal LM.

``token_logprobs`` returns, for each sequence ``ids`` and each wanted position ``p``,
``log_softmax(z(ids[:p]) / T)[ids[p]]``: the logits at index ``p - 1`` score the token at ``p`` (the one-position
shift of rlt-method.md 2.4 step 6).

Speed (why this is not a plain ``model(ids).logits`` per sequence, as the reference does):

* sequences run in right-padded batches with an attention mask; right padding keeps every real token at its
  unpadded position id, so batched values equal one-at-a-time values. Completions of the same prompt are
  batched together, longest first (little padding);
* a prefix that every row of a batch shares (the whole prompt for the K or G completions of one question, else
  the system prompt) is run once and its KV cache is repeated over the batch;
* only the decoder runs on the batch; the output embedding (``lm_head``) is applied to the hidden states at the
  wanted positions only, in chunks. The full-vocabulary projection of every position is otherwise a large share
  of the cost and the memory;
* ``log_softmax`` runs in fp32 or wider (the reference runs it in the model dtype, bf16 in its runs).

The last three depend on the architecture: :func:`plan_forward` checks each on a tiny probe against the plain
forward and falls back to the plain path (e.g. for logit soft-capping or caches that cannot be repeated).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_LOGIT_CHUNK_ELEMENTS = 1 << 26  # logits materialised at once: 64M floats = 256 MB in fp32
_POSTPROCESS_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate pass


@dataclass(frozen=True)
class ForwardPlan:
    """How to run one model; :func:`plan_forward` fills it after checking each shortcut.

    Attributes:
        decoder, head: when set, run ``decoder`` and apply ``head`` at the wanted positions only.
        share_prefix: run a batch's common prefix once (KV cache repeated over the batch).
    """

    decoder: Optional[torch.nn.Module] = None
    head: Optional[torch.nn.Module] = None
    share_prefix: bool = False


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def scoring_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Eval mode + inference mode for the duration, restoring each model's train/eval flag afterwards.

    During GRPO the teacher is the live policy: it must be scored as-is and handed back in training mode.
    """
    flags = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _body(model, plan: ForwardPlan, ids: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, L - prefix, D): hidden states (plan.decoder) or logits (plain) at positions prefix..L-1."""
    if plan.decoder is not None:
        net, pick, extra = plan.decoder, _last_hidden, {}
    else:  # the prefix pass needs no logits: keep one position
        net, pick, extra = model, (lambda o: o.logits), {"logits_to_keep": 1}
    if prefix == 0:
        return pick(net(input_ids=ids, attention_mask=mask))
    first = net(input_ids=ids[:1, :prefix], attention_mask=mask[:1, :prefix], use_cache=True, **extra)
    # Recent transformers name the KV cache `cache` (in and out); older ones `past_key_values`.
    name = "cache" if getattr(first, "cache", None) is not None else "past_key_values"
    cache = getattr(first, name)
    cache.batch_repeat_interleave(ids.shape[0])
    return pick(net(input_ids=ids[:, prefix:], attention_mask=mask, use_cache=True, **{name: cache}))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the dtype (a wrong shortcut is off by O(1), not by rounding)."""
    tol = 1e-3 if a.dtype in (torch.float32, torch.float64) else 5e-2
    a, b = a.float(), b.float()
    return a.shape == b.shape and ((a - b).abs().max() / a.abs().max().clamp_min(1e-6)).item() <= tol


def plan_forward(model: torch.nn.Module, gather_hidden: bool = True, share_prefix: bool = True) -> ForwardPlan:
    """Check the shortcuts on a tiny probe (two 12-token rows sharing 6 tokens) and keep those that agree.

    Hidden-state gathering needs ``model(ids).logits == lm_head(decoder(ids).last_hidden_state)``; prefix sharing
    needs the cached continuation to equal the plain forward. Anything unexpected falls back to the plain path.
    """
    plan = ForwardPlan()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    decoder = getattr(model, "get_decoder", lambda: None)() if head is not None else None
    cfg = getattr(model, "config", None)
    postprocess = any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _POSTPROCESS_ATTRS)
    vocab = cfg.vocab_size if getattr(cfg, "vocab_size", None) else 16
    ids = (torch.arange(3, 27) * 7919 % vocab).view(2, 12).to(model_device(model))
    ids[1, :6] = ids[0, :6]
    mask = torch.ones_like(ids)
    with scoring_mode(model):
        try:
            full = model(input_ids=ids, attention_mask=mask).logits
        except Exception as exc:
            log.info("probe forward of %s failed (%s); using the plain path", type(model).__name__, exc)
            return plan
        if gather_hidden and decoder is not None and decoder is not model and not postprocess:
            try:
                if _close(full, head(_body(model, ForwardPlan(decoder, head), ids, mask, 0))):
                    plan = ForwardPlan(decoder, head)
            except Exception as exc:
                log.info("hidden-state path unavailable for %s (%s)", type(model).__name__, exc)
        if share_prefix:
            try:
                split = _body(model, plan, ids, mask, 6)
                split = plan.head(split) if plan.head is not None else split
                if _close(full[:, 6:], split):
                    plan = ForwardPlan(plan.decoder, plan.head, True)
            except Exception as exc:
                log.info("prefix sharing unavailable for %s (%s)", type(model).__name__, exc)
    return plan


def _selected_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float, fp32: bool) -> torch.Tensor:
    """(N, V) logits, (N,) labels -> (N,) float64 log-probs of the labels at ``logits / temperature``."""
    x = logits.float() if fp32 and logits.dtype in (torch.float16, torch.bfloat16) else logits  # fp64 stays
    return F.log_softmax(x / temperature, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).double()


def _batch_logprobs(model, plan: ForwardPlan, ids: torch.Tensor, mask: torch.Tensor, rows_pos: list[torch.Tensor],
                    labels: torch.Tensor, temperature: float, fp32: bool, min_pos: int) -> torch.Tensor:
    """Log-probs of ``labels`` at the given positions of each row of one padded batch; (N,) float64."""
    bsz, length = ids.shape
    prefix = 0
    if plan.share_prefix and bsz > 1:  # common prefix of all rows, ending before the first scored logit
        same = (ids == ids[:1]).all(0).long()
        prefix = min(int(same.cumprod(0).sum()), min_pos - 1)
        prefix = prefix if prefix >= _MIN_SHARED_PREFIX else 0
    out = _body(model, plan, ids, mask, prefix)  # (B, L - prefix, D)
    span = length - prefix
    flat = torch.cat([r * span + pos - 1 - prefix for r, pos in enumerate(rows_pos)]).to(out.device)
    out = out.reshape(bsz * span, -1)
    width = plan.head.weight.shape[0] if plan.head is not None else out.shape[-1]
    chunk = max(1, _LOGIT_CHUNK_ELEMENTS // width)
    parts = []
    for i in range(0, flat.shape[0], chunk):
        x = out[flat[i:i + chunk]]
        parts.append(_selected_logprobs(plan.head(x) if plan.head is not None else x, labels[i:i + chunk],
                                        temperature, fp32))
    return torch.cat(parts)


def _batches(sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], todo: list[int],
             batch_size: int) -> list[list[int]]:
    """Batches of row indices: rows with the same prompt part (tokens before the first scored one) form their
    own batches, so the whole prompt is shared; lone rows are batched together (they share the system prompt).
    Longest first everywhere, for little padding."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(tuple(sequences[i][:min(positions[i])]), []).append(i)
    by_len = lambda i: -len(sequences[i])  # noqa: E731
    batches, singles = [], []
    for group in groups.values():
        if len(group) == 1:
            singles += group
            continue
        group.sort(key=by_len)
        batches += [group[j:j + batch_size] for j in range(0, len(group), batch_size)]
    singles.sort(key=by_len)
    batches += [singles[j:j + batch_size] for j in range(0, len(singles), batch_size)]
    return sorted(batches, key=lambda b: by_len(b[0]))


def token_logprobs(model: torch.nn.Module, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                   temperature: float = 1.0, batch_size: int = 8, pad_id: int = 0, fp32: bool = True,
                   plan: Optional[ForwardPlan] = None) -> list[torch.Tensor]:
    """Log-probs of chosen tokens under ``model`` at ``logits / temperature``.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, L, V); used as-is (call inside :func:`scoring_mode`).
        sequences: token ids per sequence, lengths L_i.
        positions: per sequence, the positions p (1 <= p < L_i) whose token ids[p] is scored given ids[:p].
            A sequence with no positions is not run at all.
        temperature: logits are divided by it before the softmax.
        batch_size: sequences per forward pass.
        pad_id: filler id for right padding (masked out; never scored).
        fp32: softmax in at least fp32 (True) or in the model's dtype (reference behaviour).
        plan: :func:`plan_forward` result (default: the plain forward).
    Returns:
        per sequence a CPU float64 tensor of shape (len(positions[i]),), in the order of ``positions[i]``.
    """
    if len(sequences) != len(positions):
        raise ValueError(f"{len(sequences)} sequences but {len(positions)} position lists")
    plan = plan or ForwardPlan()
    out = [torch.empty(0, dtype=torch.float64) for _ in sequences]
    todo = [i for i, pos in enumerate(positions) if len(pos)]
    for i in todo:
        if min(positions[i]) < 1 or max(positions[i]) >= len(sequences[i]):
            raise ValueError(f"sequence {i}: positions must lie in [1, {len(sequences[i])}), got "
                             f"[{min(positions[i])}, {max(positions[i])}]")
    device = model_device(model)
    for rows in _batches(sequences, positions, todo, batch_size):
        length = max(len(sequences[i]) for i in rows)
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        rows_pos, labels = [], []
        for r, i in enumerate(rows):
            seq = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
            pos = torch.as_tensor(list(positions[i]), dtype=torch.long)
            rows_pos.append(pos)  # logits at p-1 predict the token at p
            labels.append(seq[pos])
        lp = _batch_logprobs(model, plan, ids.to(device), mask.to(device), rows_pos, torch.cat(labels).to(device),
                             temperature, fp32, min(min(positions[i]) for i in rows)).cpu()
        for i, part in zip(rows, torch.split(lp, [len(positions[i]) for i in rows])):
            out[i] = part
    return out

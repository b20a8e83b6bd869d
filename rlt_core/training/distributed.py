"""Data parallelism for the three trainers: batch arithmetic, the process group, strategies as Trainer arguments.

Nothing here starts processes: a launcher does (``torch.distributed.run`` on one host through
:func:`rlt_core.training.launch.launch_local`, Ray Train's ``TorchTrainer`` across hosts), and every rank then calls
:func:`rlt_core.training.launch.run_rank`. This module holds what a rank needs to join the gang and what the recipe
needs to stay the same whatever the gang size:

* :func:`derive_batch`: the global batch is a recipe value; the per-rank micro-batch and the gradient accumulation
  are derived from it and the number of ranks, or the recipe is refused with a message naming its fields;
* :func:`init_process_group`: joins the gang from the launcher's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) with a collective timeout, so a dead peer fails the others
  within a bounded time instead of hanging them;
* :func:`trainer_args`: the ``TrainingArguments`` a strategy adds (``ddp_backend``/``ddp_timeout``; FSDP2 through
  accelerate; a DeepSpeed ZeRO-3 config).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

log = logging.getLogger(__name__)

Strategy = Literal["ddp", "fsdp", "deepspeed_zero3"]
Backend = Literal["auto", "gloo", "nccl"]


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's ``global_batch`` examples are split: ``per_rank * grad_accum * ranks``."""

    global_batch: int
    ranks: int
    per_rank: int
    grad_accum: int


def derive_batch(global_batch: int, ranks: int, per_rank: int, *, what: str = "batch_size",
                 per_rank_field: str = "per_device_batch_size") -> BatchPlan:
    """Gradient accumulation that keeps ``global_batch`` fixed for ``ranks`` ranks of ``per_rank`` examples.

    Raises:
        ValueError: naming the recipe fields, when ``global_batch`` is not a multiple of ``per_rank * ranks``.

    >>> derive_batch(16, 2, 4)
    BatchPlan(global_batch=16, ranks=2, per_rank=4, grad_accum=2)
    """
    if ranks < 1 or per_rank < 1 or global_batch < 1:
        raise ValueError(f"{what}={global_batch}, {per_rank_field}={per_rank} and ranks={ranks} must be >= 1")
    if global_batch % (per_rank * ranks):
        fits = [d for d in range(1, global_batch + 1) if global_batch % (d * ranks) == 0]
        hint = (f"{per_rank_field} in {fits[:8]}" if fits else f"a number of ranks dividing {global_batch}")
        raise ValueError(f"{what}={global_batch} is not a multiple of {per_rank_field}*ranks = {per_rank}*{ranks}: "
                         f"the global batch cannot stay fixed on {ranks} rank(s); use {hint}")
    return BatchPlan(global_batch, ranks, per_rank, global_batch // (per_rank * ranks))


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``(0, 1, 0)`` outside a gang)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def resolve_backend(backend: Backend, use_cpu: bool) -> str:
    """``gloo`` on CPU, ``nccl`` on GPU, unless named."""
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() and not use_cpu else "gloo"


def init_process_group(backend: str, timeout_s: float, use_cpu: bool) -> bool:
    """Join the gang described by the environment; a no-op with one rank or when already joined (Ray Train's
    ``TorchTrainer`` makes the group itself). Returns whether this call created the group.

    ``timeout_s`` bounds every collective (gloo and NCCL alike): a rank whose peer died mid-step raises after at
    most that long, when the peer's socket closing has not already failed it (gloo notices a closed peer at once).
    """
    import torch
    import torch.distributed as dist

    rank, size, local = world()
    if not use_cpu and torch.cuda.is_available():
        torch.cuda.set_device(local)
    if size <= 1 or dist.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local)   # eager NCCL init: a bad GPU fails here, not mid-step
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank,
                            world_size=size, **kwargs)
    log.info("rank %d/%d joined the %s process group (collective timeout %.0f s)", rank, size, backend, timeout_s)
    return True


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object); ``value`` itself outside a gang."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` outside a gang."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


NODE_ENV = "RLT_RANK_NODE"   # set by a launcher that knows the node's name (infra/engine/gang.py under Ray)


def placement() -> dict[str, Any]:
    """Where this rank runs: the launcher's node name (``$RLT_RANK_NODE``) else the host name, and the pid."""
    import socket

    return {"node": os.environ.get(NODE_ENV) or socket.gethostname(), "host": socket.gethostname(),
            "pid": os.getpid()}


def deepspeed_zero3_config() -> dict[str, Any]:
    """A DeepSpeed ZeRO-3 config for ``TrainingArguments(deepspeed=...)`` ("auto" values are filled in by
    transformers from the Trainer's own arguments, so the global batch stays the recipe's)."""
    return {
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto",
                              "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }


def fsdp_config(layer_cls: Optional[str] = None) -> dict[str, Any]:
    """FSDP2 through accelerate: full sharding, one unit per decoder layer (``layer_cls``; None: the model's
    ``_no_split_modules``), full state dict for the final save."""
    cfg: dict[str, Any] = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
                           "cpu_ram_efficient_loading": False}
    if layer_cls:
        cfg["transformer_layer_cls_to_wrap"] = [layer_cls]
    return cfg


def trainer_args(strategy: Strategy, backend: str, timeout_s: float, world_size: int,
                 fsdp_layer_cls: Optional[str] = None) -> dict[str, Any]:
    """Extra ``TrainingArguments`` for ``strategy``; ``{}`` with one rank (the single-process path, unchanged).

    FSDP and ZeRO-3 are for GPUs: accelerate 1.15 turns its FSDP plugin on only for accelerator gangs (a CPU/gloo
    gang silently trains with DDP instead), and DeepSpeed needs CUDA; :class:`rlt_core.training.launch.TrainJob`
    refuses them for CPU recipes."""
    if world_size <= 1:
        return {}
    args: dict[str, Any] = {"ddp_backend": backend, "ddp_timeout": int(timeout_s)}
    if strategy == "fsdp":
        args.update(fsdp=True, fsdp_config=fsdp_config(fsdp_layer_cls))
    elif strategy == "deepspeed_zero3":
        try:
            import deepspeed  # noqa: F401  (optional extra: GPUs only)
        except ImportError as err:
            raise RuntimeError("strategy deepspeed_zero3 needs the deepspeed package (an optional extra for GPU "
                               "hosts; not installed here)") from err
        args.update(deepspeed=deepspeed_zero3_config())
    else:
        args.update(ddp_find_unused_parameters=False)
    return args


@contextlib.contextmanager
def full_parameters(trainer, module) -> Iterator[None]:
    """Full parameters of ``module`` (the trained policy) for forwards outside the trainer's step, such as the RLT
    reward's teacher forward on the live policy; a no-op unless the parameters are sharded.

    Sharded forwards are collectives: under FSDP2 each forward of a sharded module all-gathers its parameters, so a
    rank that runs more reward batches than another (its completions are longer, or more) would wait forever for a
    peer, and a shortcut through a submodule would meet sharded tensors. Here the parameters are gathered once on
    entry (one collective per call, which every rank makes: TRL scores every generation batch on every rank), kept
    whole while the reward runs as many plain local forwards as it needs, and resharded on exit.

    * FSDP2 (``torch.distributed.fsdp.fully_shard``, what accelerate's FSDP2 plugin applies): ``unshard()`` every
      FSDP module with resharding after forward off; tested on CPU with gloo (2 ranks, unequal reward batches, the
      same rewards as the unsharded model; accelerate itself runs FSDP only on accelerators).
    * DeepSpeed ZeRO-3: TRL's ``unwrap_model_for_generation`` (parameters gathered, ZeRO hooks removed, as TRL does
      for its own generation); configured, not run here (no GPU, no deepspeed).
    """
    acc = getattr(trainer, "accelerator", None)
    ds = getattr(getattr(acc, "state", None), "deepspeed_plugin", None)
    if ds is not None and getattr(ds, "zero_stage", 0) == 3:
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(trainer.model_wrapped, acc, gather_deepspeed3_params=True):
            yield
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:   # torch without FSDP2
        yield
        return
    shards = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not shards:
        yield
        return
    reshard = [_reshards_after_forward(m) for m in shards]
    for m in shards:
        m.set_reshard_after_forward(False, recurse=False)
    for m in shards:
        m.unshard()
    try:
        yield
    finally:
        for m, flag in zip(shards, reshard):
            m.reshard()
            m.set_reshard_after_forward(flag, recurse=False)


def _reshards_after_forward(module) -> bool:
    try:   # FSDP2 has no public getter; the param group keeps a post-forward mesh when it reshards
        group = module._get_fsdp_state()._fsdp_param_group   # noqa: SLF001
        return group is None or group.post_forward_mesh_info is not None
    except AttributeError:
        return True


def is_sharded(trainer) -> bool:
    """Whether the trainer's model parameters are sharded over ranks (FSDP or DeepSpeed ZeRO-3)."""
    acc = getattr(trainer, "accelerator", None)
    return bool(acc is not None and (getattr(acc, "is_fsdp2", False) or getattr(acc.state, "fsdp_plugin", None)
                                     or getattr(acc.state, "deepspeed_plugin", None)))


__all__ = ["BatchPlan", "barrier", "broadcast_from_main", "deepspeed_zero3_config", "derive_batch", "fsdp_config",
           "full_parameters", "init_process_group", "is_sharded", "resolve_backend", "trainer_args", "world"]

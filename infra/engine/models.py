"""Loading models for stages: model references and checkpoint artifacts -> in-memory models (cached per process)."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
from typing import Any

import torch

from data_contracts import ArtifactRef
from data_contracts.errors import ExpectedError
from infra.engine.context import RunContext
from infra.models import ModelSnapshot, resolve_model, weights_digest
from rlt_core.modeling import load_causal_lm, load_tokenizer

log = logging.getLogger("rlt")
_LOCK = threading.Lock()
_VERIFIED: set[tuple[str, str]] = set()
_ENGINE_LOCKS: dict[str, threading.Lock] = {}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CheckpointCorrupt(ExpectedError, RuntimeError):
    """A checkpoint's files do not hash to the digest its catalog record holds."""


def checkpoint_snapshot(ctx: RunContext, ref: ArtifactRef | str) -> ModelSnapshot:
    """A local, digest-verified folder for a checkpoint artifact (or its key), downloaded once when the store is
    remote."""
    r: ArtifactRef | _KeyOnly = ref if isinstance(ref, ArtifactRef) else _KeyOnly(ref)
    rec = ctx.catalog.artifact(r.key)
    if rec is None:
        raise KeyError(f"checkpoint {r.key} is not committed")
    row = json.loads(rec["stats_json"])["checkpoint"]
    if row["phase"] == "base":  # no training happened: the base model itself is the checkpoint
        return resolve_model(row["base_model"])
    files = [f for f in rec["files"] if not f.endswith(".parquet")]
    folders = {os.path.dirname(f) for f in files}
    if len(folders) != 1:
        raise CheckpointCorrupt(f"checkpoint {r.key}: its files span {sorted(folders)}; expected one folder")
    src = ctx.store.path(folders.pop())
    with _LOCK:
        if ctx.store.local:
            path = src
        else:
            path = os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory", "checkpoints",
                                f"{r.key}-{rec['digest']}")
            ctx.store.get_dir(src, [os.path.basename(f) for f in files], path)
        if (path, rec["digest"]) not in _VERIFIED:
            got = weights_digest(path)
            if got != rec["digest"]:
                if not ctx.store.local:
                    shutil.rmtree(path, ignore_errors=True)
                raise CheckpointCorrupt(f"checkpoint {r.key}: files at {src} hash to {got}, but the catalog "
                                        f"records {rec['digest']}; refusing to use them")
            _VERIFIED.add((path, rec["digest"]))
    return ModelSnapshot(f"artifact:{r.key}", path, rec["digest"])


class _KeyOnly:
    def __init__(self, key: str):
        self.key = key


def local_model(ctx: RunContext, ref: str, path: str, digest: str) -> str:
    """The local folder of a model the stage resolved on the driver: ``path`` when it exists on this host (one
    machine, or a shared file system), else the same model resolved here (a checkpoint ``artifact:<key>`` fetched
    from the store, a ``builtin:`` model materialised, a hub id downloaded) and checked against ``digest``. This is
    what lets a shard run on a Ray worker of another machine (infra/engine/executor.py)."""
    if os.path.isdir(path):
        return path
    snap = checkpoint_snapshot(ctx, ref.removeprefix("artifact:")) if ref.startswith("artifact:") else \
        resolve_model(ref)
    if snap.digest != digest:
        raise CheckpointCorrupt(f"model {ref}: resolved on {os.uname().nodename} to {snap.path} with digest "
                                f"{snap.digest}, but the stage resolved it to digest {digest}; the hosts disagree "
                                "on this model (a different folder or builtin build)")
    log.info("model %s: %s is not on this host; using %s (digest verified)", ref, path, snap.path)
    return snap.path


def compute_device() -> str:
    """Where shared (inference) models compute: $RLT_DEVICE, else the GPU when this process sees one (a Ray
    shard task that asked for ``num_gpus`` sees exactly its GPU), else the CPU."""
    return os.environ.get("RLT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def _load(path: str, dtype: str) -> Any:
    return load_causal_lm(path, DTYPES[dtype], device=compute_device())


@functools.lru_cache(maxsize=4)
def _tok(path: str, padding_side: str) -> Any:
    return load_tokenizer(path, padding_side)


def model_and_tokenizer(path: str, dtype: str = "float32", padding_side: str = "left") -> tuple[Any, Any]:
    """A loaded (shared, eval-mode) model and tokenizer for a local model folder: loaded once per process."""
    with _LOCK:
        return _load(path, dtype), _tok(path, padding_side)


def tokenizer(path: str, padding_side: str = "left") -> Any:
    """Only the tokenizer of a model folder (a server backend needs no weights in this process)."""
    with _LOCK:
        return _tok(path, padding_side)


def engine_lock(path: str) -> threading.Lock:
    """One forward pass at a time per loaded model: shard threads take turns on the engine, and the one
    waiting does its storage work meanwhile (the engine never waits for a part to be written)."""
    with _LOCK:
        return _ENGINE_LOCKS.setdefault(path, threading.Lock())


def fresh_model(path: str, dtype: str = "float32") -> Any:
    """A private copy for training (never the shared cached instance)."""
    return load_causal_lm(path, DTYPES[dtype]).train()

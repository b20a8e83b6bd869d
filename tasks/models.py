"""Loading models for stages: model references and checkpoint artifacts -> in-memory models (cached per process)."""
from __future__ import annotations

import functools
import os
import threading

import torch

from data_contracts import ArtifactRef
from infra.models import ModelSnapshot, resolve_model
from rlt_core.modeling import load_causal_lm, load_tokenizer
from tasks.common import RunContext

_LOCK = threading.Lock()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def checkpoint_snapshot(ctx: RunContext, ref: ArtifactRef) -> ModelSnapshot:
    """A local folder for a checkpoint artifact (downloaded once when the store is remote)."""
    rec = ctx.manifest.artifact(ref.key)
    if rec is None:
        raise KeyError(f"checkpoint {ref.key} is not committed")
    import json

    row = json.loads(rec["stats_json"])["checkpoint"]
    if row["phase"] == "base":  # no training happened: the base model itself is the checkpoint
        return resolve_model(row["base_model"])
    cache = os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory", "checkpoints", ref.key)
    files = [f.rsplit("/", 1)[-1] for f in rec["files"]]
    path = ctx.store.get_dir(ref.uri, files, cache)
    return ModelSnapshot(f"artifact:{ref.key}", path, row["digest"])


@functools.lru_cache(maxsize=4)
def _load(path: str, dtype: str):
    return load_causal_lm(path, DTYPES[dtype])


@functools.lru_cache(maxsize=4)
def _tok(path: str, padding_side: str):
    return load_tokenizer(path, padding_side)


def model_and_tokenizer(path: str, dtype: str = "float32", padding_side: str = "left"):
    """A loaded (shared, eval-mode) model and tokenizer for a local model folder."""
    with _LOCK:
        return _load(path, dtype), _tok(path, padding_side)


def fresh_model(path: str, dtype: str = "float32"):
    """A private copy for training (never the shared cached instance)."""
    return load_causal_lm(path, DTYPES[dtype]).train()

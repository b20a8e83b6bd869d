"""Checkpoints as artifacts: safetensors only (never pickles), uploaded under a per-run prefix, digest-recorded.

Two runs that train the same key can never overwrite each other's weights: each uploads to
``<artifact uri>/runs/<run_id>/`` and the committed record names exactly those files and their digest, which
every reader checks after download (infra/engine/models.py).
"""
from __future__ import annotations

import json
import os
from typing import Any

from infra.catalog.artifacts import ArtifactWriter
from infra.models import weights_digest

ALLOWED = (".safetensors", ".json", ".jinja", ".txt", ".model")
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def store_checkpoint(run: Any, writer: ArtifactWriter, model_dir: str | None, row: dict[str, Any]) -> None:
    """Upload ``model_dir``'s files (refusing pickles) and write the contract row; the runner commits."""
    files: list[str] = []
    digest = row.get("base_digest", "")
    if model_dir is not None:
        bad = [f for f in os.listdir(model_dir) if f.endswith(PICKLES)]
        if bad:
            raise ValueError(f"{model_dir}: pickle-based weight files {bad}; only safetensors are stored")
        names = sorted(f for f in os.listdir(model_dir) if f.endswith(ALLOWED) and os.path.isfile(
            os.path.join(model_dir, f)))
        if not any(n.endswith(".safetensors") for n in names):
            raise ValueError(f"{model_dir}: no .safetensors weights to register")
        digest = weights_digest(model_dir)
        staging = os.path.join(model_dir, ".upload")
        os.makedirs(staging, exist_ok=True)
        for n in names:
            dst = os.path.join(staging, n)
            if not os.path.exists(dst):
                os.link(os.path.join(model_dir, n), dst)
        files = writer.store.put_dir(staging, writer.run_prefix)
        writer.add_files([f"{writer.run_prefix}/{n}" for n in files])
    row = dict(row, digest=digest, files=files, config_json=json.dumps(row.get("config_json", {}), default=str)
               if not isinstance(row.get("config_json"), str) else row["config_json"],
               metrics_json=row["metrics_json"] if isinstance(row.get("metrics_json"), str)
               else json.dumps(row.get("metrics_json", {}), default=str))
    if writer.contract is None:
        raise ValueError(f"{writer.name}: no contract, so no checkpoint row")
    writer.contract.check([row])
    writer.write_part([row])
    if model_dir is not None:   # the record promises these weights; a base-model "checkpoint" stores none
        writer.digest = digest
    writer.stats.update(checkpoint=row, steps=row["steps"], digest=digest)

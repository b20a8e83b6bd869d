"""Register a trained model folder as a checkpoint artifact (safetensors only, never pickles)."""
from __future__ import annotations

import json
import os

from data_contracts import ArtifactRef
from data_contracts.checkpoints import STUDENT_CONTRACT, TEACHER_CONTRACT
from infra.artifacts import ArtifactWriter
from infra.models import folder_digest
from tasks.common import RunContext, finish

ALLOWED = (".safetensors", ".json", ".jinja", ".txt", ".model")


def commit_checkpoint(ctx: RunContext, writer: ArtifactWriter, stage: str, t0: float, mlrun: str, *,
                      role: str, model_dir: str | None, base_ref: str, base_digest: str, phase: str, steps: int,
                      data_keys: list[str], student_key: str | None, config: dict, metrics: dict) -> ArtifactRef:
    """Upload the model folder's files (refusing pickles), then commit the checkpoint with its contract row."""
    contract = TEACHER_CONTRACT if role == "teacher" else STUDENT_CONTRACT
    files: list[str] = []
    digest = base_digest
    if model_dir is not None:
        bad = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
        if bad:
            raise ValueError(f"{model_dir}: pickle-based weight files {bad}; only safetensors are stored")
        names = [f for f in os.listdir(model_dir) if f.endswith(ALLOWED)]
        if not any(n.endswith(".safetensors") for n in names):
            raise ValueError(f"{model_dir}: no .safetensors weights to register")
        digest = folder_digest(model_dir)
        staging = os.path.join(model_dir, ".upload")
        os.makedirs(staging, exist_ok=True)
        for n in names:
            dst = os.path.join(staging, n)
            if not os.path.exists(dst):
                os.link(os.path.join(model_dir, n), dst)
        files = ctx.store.put_dir(staging, writer.uri)
        writer.add_files([f"{writer.uri}/{n}" for n in files])
    row = dict(role=role, base_model=base_ref, base_digest=base_digest, digest=digest, files=files, phase=phase,
               steps=steps, data_keys=data_keys, student_key=student_key, config_json=json.dumps(config, default=str),
               metrics_json=json.dumps(metrics, default=str))
    contract.check([row])
    writer.write_part(contract.to_table([row]))
    return finish(ctx, writer, stage, t0, {"checkpoint": row, "steps": steps, "digest": digest}, mlrun)

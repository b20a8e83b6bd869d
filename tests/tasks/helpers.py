"""Shared set-up for stage tests: a store with problems and a base-model teacher checkpoint on a tiny model."""
from __future__ import annotations

from data_contracts import ArtifactRef
from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from tasks import ingest, train_teacher


def base_teacher(ctx: RunContext, model_dir: str, problems: ArtifactRef) -> ArtifactRef:
    """Register ``model_dir`` as-is as the teacher checkpoint (train_teacher with no training phase)."""
    cfg = train_teacher.TrainTeacherConfig(base_model=model_dir, student_model=model_dir, phases=[])
    return run_stage(train_teacher.STAGE, ctx, cfg, problems)


def setup(root: str, model_dir: str, n: int = 6) -> tuple[RunContext, ArtifactRef, ArtifactRef]:
    ctx = RunContext(root, tracking=False)
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": n}, heldout_fraction=0.2))
    return ctx, probs["problems"], base_teacher(ctx, model_dir, probs["problems"])


def commit_rows(ctx: RunContext, name: str, contract, rows: list[dict], seed: str = "") -> ArtifactRef:
    """Commit hand-made rows as an artifact (what a stage would commit), for tests that need fixed inputs."""
    from infra.catalog.artifacts import ArtifactWriter, KeyParts, ref_from_record

    parts = KeyParts(name, "test", {"t": name, "seed": seed})
    w = ArtifactWriter(ctx.store, name, parts.key(), parts, ctx.run_id, contract)
    w.write_part(rows)
    assert ctx.catalog.commit([w.commit_spec()])
    return ref_from_record(ctx.catalog.artifact(w.key))


def catalog_written_before(root: str, relations: tuple[str, ...]):
    """A catalog at ``root`` written (one ``runs`` row) by code that did not know ``relations`` yet, then opened
    again for writing by today's code (which adds them): the reopened Catalog."""
    from infra.catalog import lake as cat_mod
    from infra.catalog.store import Store

    saved = dict(cat_mod.RELATIONS)
    try:
        for name in relations:
            del cat_mod.RELATIONS[name]
        old = cat_mod.Catalog(Store(root))
        old.append("runs", [dict(run_id="r0", flow="test", status="done")])
        old.close()
    finally:
        cat_mod.RELATIONS.clear()
        cat_mod.RELATIONS.update(saved)
    return cat_mod.Catalog(Store(root))

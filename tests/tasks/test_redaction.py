"""Secrets inside exception text never reach the catalog: shard errors and stage records are masked."""
from __future__ import annotations

import pytest

from infra.engine.context import StageFailed
from infra.engine.runner import run_stage
from infra.settings import redact_text
from tasks import generate
from tests.tasks.helpers import setup

LEAK = "fetch https://alice:hunter2-secret@example.org/x?token=tok-123456&b=1 failed (key AKIA, secret {s})"


def test_redact_text_masks_url_credentials_query_tokens_and_secret_env(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-987654")
    text = redact_text(LEAK.format(s="env-secret-987654"))
    assert "hunter2" not in text and "tok-123456" not in text and "env-secret-987654" not in text
    assert "https://***@example.org/x?token=***&b=1" in text


def test_failed_shard_and_stage_records_hold_no_secret(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-987654")
    ctx, problems, teacher = setup(str(tmp_path / "d"), tiny_model_dir, n=4)

    def leaky(job, *args):
        raise RuntimeError(LEAK.format(s="env-secret-987654"))

    monkeypatch.setattr(generate, "generate_shard", leaky)
    cfg = generate.GenerateConfig(num_samples=1, sampling={"max_new_tokens": 4}, shard_size=2, split="all")
    with pytest.raises(StageFailed):
        run_stage(generate.STAGE, ctx, cfg, problems, teacher)
    stored = [r["error"] for r in ctx.catalog.rows("SELECT error FROM shards WHERE status = 'failed'")]
    stored += [r["detail"] for r in ctx.catalog.rows("SELECT detail FROM stage_runs WHERE status = 'failed'")]
    assert stored and any("example.org" in s for s in stored), stored
    for s in stored:
        assert "hunter2" not in s and "tok-123456" not in s and "env-secret-987654" not in s, s

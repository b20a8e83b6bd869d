"""score scores at the temperature the explanations were sampled at (rlt-method.md 2.1), and refuses otherwise: a
recipe derives both from its one ``temperature``, but a stage run by hand with another value used to pass silently."""
from __future__ import annotations

import pytest

from infra.engine.runner import run_stage
from tasks import generate, score
from tests.tasks.helpers import setup


def test_score_refuses_explanations_sampled_at_another_temperature(tmp_path, tiny_model_dir):
    ctx, problems, teacher = setup(str(tmp_path / "data"), tiny_model_dir, n=4)
    gen = generate.GenerateConfig(num_samples=1, sampling={"temperature": 0.9, "max_new_tokens": 4}, shard_size=4)
    explanations = run_stage(generate.STAGE, ctx, gen, problems, teacher)
    at_07 = score.ScoreConfig(student_model=tiny_model_dir)   # the reward's default teacher temperature: 0.7
    with pytest.raises(score.TemperatureMismatch, match=r"sampled at temperature 0\.9 .* at 0\.7"):
        run_stage(score.STAGE, ctx, at_07, explanations, teacher)
    assert ctx.catalog.rows("SELECT * FROM artifacts_committed WHERE name = 'scored_explanations'") == []
    at_09 = score.ScoreConfig(student_model=tiny_model_dir, reward={"teacher_temperature": 0.9})
    scored = run_stage(score.STAGE, ctx, at_09, explanations, teacher)
    assert scored.num_rows == explanations.num_rows

"""Every recipe parses into its typed model; overrides and typos behave."""
import pathlib

import pytest

from flows.recipe import RecipeError, apply_overrides, load_recipe

RECIPES = sorted((pathlib.Path(__file__).resolve().parents[2] / "flows" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(path):
    r = load_recipe(path)
    assert r.name == path.stem


def test_paper_recipe_keeps_the_paper_defaults():
    r = load_recipe(pathlib.Path(RECIPES[0]).parent / "paper-7b.yaml")
    g = r.train_teacher.grpo
    assert (g.num_generations, g.prompts_per_step, g.learning_rate, g.beta, g.max_steps) == (64, 16, 1e-6, 0.04, 125)
    assert r.train_teacher.reward.answer_coef == (1.0, 0.01) and r.train_teacher.reward.kl_coef == (3.0, 0.03)


def test_set_overrides_and_typos(tmp_path):
    tiny = pathlib.Path(RECIPES[0]).parent / "tiny.yaml"
    r = load_recipe(tiny, ["generate.sampling.temperature=0.9", "filter.rules.top_k=2"])
    assert r.generate.sampling.temperature == 0.9 and r.filter.rules.top_k == 2
    with pytest.raises(RecipeError, match="temprature"):
        load_recipe(tiny, ["generate.sampling.temprature=0.9"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides({}, ["nonsense"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngenerate: [1, 2]\n")
    with pytest.raises(RecipeError, match="bad.yaml"):
        load_recipe(bad)

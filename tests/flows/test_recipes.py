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
    r = load_recipe(tiny, ["temperature=0.9", "filter.rules.top_k=2"])
    assert r.generate.sampling.temperature == 0.9 and r.filter.rules.top_k == 2
    with pytest.raises(RecipeError, match="temprature"):
        load_recipe(tiny, ["generate.sampling.temprature=0.9"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides({}, ["nonsense"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngenerate: [1, 2]\n")
    with pytest.raises(RecipeError, match="bad.yaml"):
        load_recipe(bad)


def test_shared_settings_are_set_once_and_derived_everywhere():
    """The reward scores explanations at the temperature they were sampled at; one prompt style for all stages."""
    tiny = pathlib.Path(RECIPES[0]).parent / "tiny.yaml"
    r = load_recipe(tiny, ["temperature=0.9", "style.student_system_prompt=Think."])
    assert r.generate.sampling.temperature == r.score.reward.teacher_temperature == 0.9
    assert r.train_teacher.grpo.temperature == r.train_teacher.reward.teacher_temperature == 0.9
    assert r.score.reward.student_temperature == 0.7   # tau_S is its own constant (rlt-method.md 2.1)
    styles = [r.generate.style, r.filter.style, r.evaluate.style, r.train_teacher.sft.style,
              r.train_teacher.reward.prompt_style, r.score.reward.prompt_style, r.distill.train.style]
    assert all(s.student_system_prompt == "Think." for s in styles)
    # a stage-level copy that disagrees is refused, naming the field to set instead
    with pytest.raises(RecipeError, match=r"generate.sampling.temperature .* top-level `temperature`"):
        load_recipe(tiny, ["generate.sampling.temperature=0.9"])
    with pytest.raises(RecipeError, match="score.reward.teacher_temperature"):
        load_recipe(tiny, ["score.reward.teacher_temperature=1.0"])
    # the same value is accepted (older recipes that spelled it out still parse), and the key sees the change
    assert load_recipe(tiny, ["generate.sampling.temperature=0.7"]).generate.sampling.temperature == 0.7
    from flows.pipeline import plan

    k07 = {p.node.id: p.key for p in plan(load_recipe(tiny))}
    k09 = {p.node.id: p.key for p in plan(load_recipe(tiny, ["temperature=0.9"]))}
    assert k07["ingest"] == k09["ingest"] and k07["score"] != k09["score"] and k07["generate"] != k09["generate"]


def test_set_value_that_is_not_yaml_is_a_recipe_error_on_one_line():
    for bad in ["a: b: c", "[unclosed", "\udcff\udcfe"]:   # the last: a non-UTF-8 argv byte, surrogate-escaped
        with pytest.raises(RecipeError, match=r"^--set ingest.source.uri=.*not valid YAML") as info:
            apply_overrides({}, [f"ingest.source.uri={bad}"])
        assert "\n" not in str(info.value) and str(info.value).isprintable()


def test_publish_alias_latest_is_reserved():
    from pydantic import ValidationError

    from flows.recipe import AuditsConfig

    with pytest.raises(ValidationError, match="'latest' is reserved"):
        AuditsConfig(publish_alias="Latest")
    assert AuditsConfig().publish_alias == "current"


def test_reference_baseline_student_is_three_more_nodes_keyed_by_the_problems_alone():
    """`evaluate.baselines: [reference]`: filter[reference] -> distill[reference] -> evaluate[reference], the same
    distill recipe on the reference solutions; the night's other keys do not change, and the baseline's keys do not
    follow the teacher's explanations."""
    from flows.pipeline import plan

    tiny = pathlib.Path(RECIPES[0]).parent / "tiny.yaml"
    plain = {p.node.id: p for p in plan(load_recipe(tiny))}
    with_base = {p.node.id: p for p in plan(load_recipe(tiny, ["evaluate.baselines=[reference]"]))}
    assert set(with_base) - set(plain) == {"filter[reference]", "distill[reference]", "evaluate[reference]"}
    assert all(with_base[n].key == p.key for n, p in plain.items())
    f, d, e = with_base["filter[reference]"], with_base["distill[reference]"], with_base["evaluate[reference]"]
    assert f.cfg.source == "reference" and set(f.parts.inputs) == {"problems"}
    assert d.parts.inputs["distill_set"] == f.keys["distill_set"] != with_base["filter"].keys["distill_set"]
    assert e.parts.inputs["model"] == d.keys["student_checkpoint"]
    assert e.node.out_name("eval_results") == "eval_reference"
    assert d.node.out_name("student_checkpoint") == "student_checkpoint_reference"
    # another teacher (its explanations change): the night's distill set changes, the baseline's does not
    other = {p.node.id: p for p in plan(load_recipe(tiny, ["evaluate.baselines=[reference]", "temperature=0.9"]))}
    assert other["filter"].key != with_base["filter"].key
    assert [other[n].key for n in (f.node.id, d.node.id)] == [f.key, d.key]
    # the audit that needs the baseline refuses a recipe without it
    with pytest.raises(RecipeError, match="evaluate: {baselines: \\[reference\\]}"):
        load_recipe(tiny, ["audits.min_gain_over_baseline=0.0"])


def test_reward_student_baseline_runs_the_baseline_branch_before_the_teacher_and_keys_the_reward_by_it():
    """`train_teacher.reward_student: baseline`: the RLT reward of train_teacher and score reads with the night's
    baseline student (distill[reference]'s checkpoint), so that branch runs first; its key replaces student_model's
    digest in the teacher's and the ledger's keys, and a recipe that leaves it unset keeps every key."""
    from flows.pipeline import plan

    tiny = pathlib.Path(RECIPES[0]).parent / "tiny.yaml"
    plain = plan(load_recipe(tiny))
    assert [p.stage for p in plain] == sorted((p.stage for p in plain), key=[
        "ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate"].index)   # stage order
    assert all("reward_student" not in p.parts.inputs for p in plain)
    ordered = plan(load_recipe(tiny, ["train_teacher.reward_student=baseline"]))
    ids = [p.node.id for p in ordered]
    assert ids.index("filter[reference]") < ids.index("distill[reference]") < ids.index("train_teacher")
    assert "evaluate[reference]" not in ids   # distilled for the reward, not evaluated: no `evaluate.baselines`
    by = {p.node.id: p for p in ordered}
    d = by["distill[reference]"]
    for node in ("train_teacher", "score"):   # score follows train_teacher's choice
        p = by[node]
        assert p.cfg.reward_student == "baseline"
        assert p.parts.inputs["reward_student"] == d.keys["student_checkpoint"]
        assert "student" not in p.parts.models and "student_model" not in p.parts.config
    before = {p.node.id: p.key for p in plain}
    assert by["ingest"].key == before["ingest"] and by["train_teacher"].key != before["train_teacher"]
    # the unused student_model is out of the key; another baseline student (distill recipe) is another teacher
    same = {p.node.id: p.key for p in plan(load_recipe(tiny, ["train_teacher.reward_student=baseline",
                                                                "train_teacher.student_model=builtin:other"]))}
    assert same["train_teacher"] == by["train_teacher"].key
    other = {p.node.id: p.key for p in plan(load_recipe(tiny, ["train_teacher.reward_student=baseline",
                                                                 "distill.train.max_steps=4"]))}
    assert other["distill[reference]"] != d.key and other["train_teacher"] != by["train_teacher"].key
    # score may keep the model reference while the teacher trains against the baseline student
    mixed = {p.node.id: p for p in plan(load_recipe(tiny, ["train_teacher.reward_student=baseline",
                                                           "score.reward_student=student_model"]))}
    assert "reward_student" not in mixed["score"].parts.inputs and "student" in mixed["score"].parts.models
    # with the evaluated baseline too, the same three nodes serve both
    both = plan(load_recipe(tiny, ["train_teacher.reward_student=baseline", "evaluate.baselines=[reference]"]))
    assert [p.node.id for p in both].count("distill[reference]") == 1
    assert {p.node.id: p for p in both}["train_teacher"].key == by["train_teacher"].key


def test_reward_student_checkpoint_must_match_the_choice(tmp_path):
    from infra.engine.reward_student import RewardStudentMismatch
    from tasks.score import ScoreConfig

    with pytest.raises(RewardStudentMismatch, match="no baseline student checkpoint is bound"):
        ScoreConfig(reward_student="baseline").reward_student_snapshot("score", None)
    with pytest.raises(ValueError, match="reward_student"):
        ScoreConfig(reward_student="teacher")

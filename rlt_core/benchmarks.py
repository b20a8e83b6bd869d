"""Evaluation benchmarks: specs, rows -> gradable items, and pass@1 with a confidence interval.

The hub benchmarks follow SkyThought @ 4bb8f3e, the harness RLT evaluated with (rlt-method.md section 5):
dataset, split, row filter, prompt template and grading. The offline benchmarks are built from the
seeded generators in :mod:`rlt_core.builtin_problems`, from their "eval" partition, disjoint from training: per
kind ``<kind>-heldout`` (the test items) and ``<kind>-validation`` (other eval-partition problems, never one of the
held-out items: the split to choose settings on, so that nothing is tuned on the test items).

Loading is separate from item building: :func:`load_benchmark_rows` reads a hub dataset (lazy
``datasets`` import), a local file in the same schema, or a generator; :func:`benchmark_items` is pure.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlt_core.builtin_problems import KINDS as BUILTIN_KINDS
from rlt_core.builtin_problems import canonical_key, generate
from rlt_core.grading import GRADERS
from rlt_core.sources import SourceError, SourceSpec, iter_raw_rows, problem_id

# Built-in benchmarks draw from the generators' "eval" partition, which training data never touches; the
# seed only fixes which eval problems are drawn.
HELDOUT_SEED = 20_250_621
VALIDATION_SEED = 20_261_206
_BOXED = "Return your final response within \\boxed{{}}. "
_GPQA_TEMPLATE = ("Return your final response within \\boxed{{}} and only include the letter choice "
                  "(A, B, C, or D) as your final response. {prompt}")
_GPQA_ANSWERS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded, or one of its rows lacks what the spec needs."""


class RowFilter(BaseModel):
    """Keep rows whose ``column`` (as text) contains ``contains``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    contains: str


class BenchmarkSpec(BaseModel):
    """One benchmark: where its rows come from, how each becomes a prompt, and how it is graded.

    ``prompt_template`` is a ``str.format`` template; ``{prompt}`` is the question text (for GPQA, the
    question plus the shuffled choices) and every column of the row is available by name.
    ``answer_columns``: the reference answer column (math, arithmetic), or the correct answer followed by
    the distractors (letter grading). Countdown items take ``numbers``/``target`` from the row's ``meta``.
    ``choice_seed`` seeds the one RNG that shuffles choices row after row, as SkyThought's
    ``random.shuffle`` after ``set_seed(41)`` does. ``n``/``seed`` drive built-in generators.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dataset: str = Field(min_length=1, description="HF dataset id, local file, or builtin:<kind>")
    subset: Optional[str] = None
    split: str = "test"
    filter: Optional[RowFilter] = None
    prompt_template: str
    grader: str
    question_column: str = "problem"
    answer_columns: tuple[str, ...] = ("answer",)
    id_column: Optional[str] = None
    choice_seed: Optional[int] = None
    n: Optional[int] = Field(default=None, ge=1)
    seed: Optional[int] = None
    limit: Optional[int] = Field(default=None, ge=1)

    @field_validator("grader")
    @classmethod
    def _known_grader(cls, v: str) -> str:
        if v not in GRADERS:
            raise ValueError(f"unknown grader {v!r}; expected one of {sorted(GRADERS)}")
        return v


BUILTIN_BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec for spec in (
        BenchmarkSpec(name="math500", dataset="qq8933/MATH500", split="test", grader="math",
                      prompt_template=_BOXED + "{problem}", question_column="problem", id_column="unique_id"),
        BenchmarkSpec(name="aime24", dataset="AI-MO/aimo-validation-aime", split="train", grader="math",
                      filter=RowFilter(column="url", contains="2024"), prompt_template=_BOXED + "{prompt}",
                      question_column="problem", id_column="id"),
        BenchmarkSpec(name="gpqa_diamond", dataset="Idavidrein/gpqa", subset="gpqa_diamond", split="train",
                      grader="letter", prompt_template=_GPQA_TEMPLATE, question_column="Question",
                      answer_columns=_GPQA_ANSWERS, id_column="Record ID", choice_seed=41),
        *(BenchmarkSpec(name=f"{kind}-{split}", dataset=f"builtin:{kind}", split=split,
                        grader="countdown" if kind == "countdown" else "arithmetic",
                        prompt_template=_BOXED + "{prompt}", question_column="question",
                        answer_columns=() if kind == "countdown" else ("answer",), n=200,
                        seed=HELDOUT_SEED if split == "heldout" else VALIDATION_SEED)
          for kind in BUILTIN_KINDS for split in ("heldout", "validation")),
    )
}


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BUILTIN_BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; expected one of {sorted(BUILTIN_BENCHMARKS)}") from None


@dataclass(frozen=True)
class Item:
    """One gradable benchmark item: grade with ``GRADERS[grader](response, reference, **grader_args)``."""

    item_id: str
    prompt: str
    reference: str
    grader: str
    grader_args: dict = field(default_factory=dict)


def load_benchmark_rows(spec: BenchmarkSpec) -> list[dict]:
    """The benchmark's raw rows, in dataset order, in the dataset's own schema.

    Built-in generators need no IO; a local file is read with :func:`rlt_core.sources.iter_raw_rows`;
    anything else goes through ``datasets.load_dataset(dataset, subset, split=split)``.

    Raises:
        BenchmarkError: the dataset cannot be reached or read, or a row is unreadable.
    """
    if spec.dataset.startswith("builtin:"):
        kind = spec.dataset.removeprefix("builtin:")
        try:
            return _builtin_rows(spec, kind)
        except ValueError as exc:
            raise BenchmarkError(f"{spec.name}: {exc}") from exc
    try:
        rows = []
        for index, row in iter_raw_rows(SourceSpec(uri=spec.dataset, split=spec.split, subset=spec.subset)):
            if not isinstance(row, dict):
                raise BenchmarkError(f"{spec.name}: row {index} of {spec.dataset} is unreadable: {row.detail}")
            rows.append(row)
        return rows
    except SourceError as exc:
        raise BenchmarkError(f"{spec.name}: {exc}") from exc


def _builtin_rows(spec: BenchmarkSpec, kind: str) -> list[dict]:
    """A built-in benchmark's problems: ``n`` from the eval partition with the spec's seed; for the validation
    split, the held-out benchmark's 200 problems are skipped, so the two never share an item."""
    n, seed = spec.n or 200, HELDOUT_SEED if spec.seed is None else spec.seed
    if spec.split != "validation":
        return generate(kind, n, seed, partition="eval")
    test = {canonical_key(p) for p in generate(kind, 200, HELDOUT_SEED, partition="eval")}
    # a longer list with the same seed starts with the shorter one: n + 200 problems hold n that are not test items
    return [p for p in generate(kind, n + len(test), seed, partition="eval") if canonical_key(p) not in test][:n]


def _required(row: dict, column: str, index: int, spec: BenchmarkSpec) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BenchmarkError(f"{spec.name}: row {index} has no value in column '{column}' "
                             f"(columns present: {sorted(map(str, row))})")
    return value


def _shuffled_choices(row: dict, index: int, spec: BenchmarkSpec, rng: random.Random) -> tuple[str, str]:
    """SkyThought's GPQA format: ``"A) x, B) y, C) z, D) w"`` and the letter of the correct answer."""
    answers = [_required(row, col, index, spec) for col in spec.answer_columns]
    correct = answers[0]
    rng.shuffle(answers)
    letters = "ABCD"[: len(answers)]
    text = ", ".join(f"{letter}) {answer}" for letter, answer in zip(letters, answers))
    # First match, as SkyThought's next(...) does when a distractor duplicates the correct answer.
    return text, next(letter for letter, answer in zip(letters, answers) if answer == correct)


def _countdown_args(row: dict, index: int, spec: BenchmarkSpec) -> dict:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else row
    numbers, target = meta.get("numbers"), meta.get("target")
    if not isinstance(numbers, (list, tuple)) or target is None:
        raise BenchmarkError(f"{spec.name}: row {index} needs meta.numbers (list) and meta.target")
    return {"numbers": [int(x) for x in numbers], "target": int(target)}


def _item_id(row: dict, question: str, spec: BenchmarkSpec) -> str:
    if spec.id_column and row.get(spec.id_column) is not None:
        return str(row[spec.id_column])
    if "solution" in row and isinstance(row["solution"], str):
        return problem_id(question, row["solution"])  # same id the ingest stage gives a generated problem
    return "q_" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def benchmark_items(spec: BenchmarkSpec, rows: Iterable[dict]) -> list[Item]:
    """Build gradable items from rows in the benchmark's own schema (filter, template, reference).

    Choices are shuffled over *all* kept rows in order before ``limit`` applies, so a limited run sees
    the same prompts as the first items of a full run.

    Raises:
        BenchmarkError: a kept row lacks the question or answer columns.
    """
    rng = random.Random(spec.choice_seed)
    items: list[Item] = []
    kept = (r for r in rows if spec.filter is None or spec.filter.contains in str(r.get(spec.filter.column, "")))
    for index, row in enumerate(kept):
        question = str(_required(row, spec.question_column, index, spec))
        args: dict = {}
        prompt_text = question
        if spec.grader == "letter":
            choices, reference = _shuffled_choices(row, index, spec, rng)
            prompt_text = question + "\n" + choices
        elif spec.grader == "countdown":
            args = _countdown_args(row, index, spec)
            reference = str(args["target"])
        else:
            reference = str(_required(row, spec.answer_columns[0], index, spec)).strip()
        fields = {str(k): v for k, v in row.items()}
        prompt = spec.prompt_template.format_map({**fields, "prompt": prompt_text})
        items.append(Item(_item_id(row, question, spec), prompt, reference, spec.grader, args))
    return items[: spec.limit] if spec.limit else items


def benchmark_questions(spec: BenchmarkSpec, rows: Iterable[dict]) -> list[tuple[str, str]]:
    """``(item_id, question)`` of every kept row, with the ids :func:`benchmark_items` gives (the bare question,
    no prompt template, no GPQA choices): what decontamination compares training problems with.

    Raises:
        BenchmarkError: a kept row lacks the question column.
    """
    kept = (r for r in rows if spec.filter is None or spec.filter.contains in str(r.get(spec.filter.column, "")))
    out = []
    for index, row in enumerate(kept):
        question = str(_required(row, spec.question_column, index, spec))
        out.append((_item_id(row, question, spec), question))
    return out[: spec.limit] if spec.limit else out


def pass_at_1(correct: list[list[bool]], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """pass@1 averaged over k samples per item, with a 95% percentile-bootstrap CI over items.

    Each item's score is the fraction of its samples that are correct (items may have different k); the
    estimate is the unweighted mean over items. The CI resamples *items* (the unit the benchmark samples)
    ``n_boot`` times with a fixed seed, so it is reproducible. With every item at 0 or 1 it collapses to a
    point; treat CIs on tiny benchmarks (AIME: 30 items) as rough.

    Args:
        correct: ``correct[i][j]`` = sample j of item i was correct; shape (items, k_i), k_i >= 1.

    Returns:
        (mean, ci_low, ci_high), each in [0, 1].
    """
    from rlt_core.eval_metrics import bootstrap_ci

    if not correct:
        raise ValueError("pass_at_1 needs at least one item")
    empty = [i for i, samples in enumerate(correct) if len(samples) == 0]
    if empty:
        raise ValueError(f"items {empty[:5]} have no samples")
    return bootstrap_ci([sum(map(float, s)) / len(s) for s in correct], n_boot, seed)

"""Benchmark-specific metrics: multiple-choice accuracy and fill-in-the-blank accuracy.

MLLMU-Bench asks each question three ways; the converters of `hf_cagul.data.benchmarks` mark
each row's ``task``:

- ``"multiple_choice"`` rows carry ``options`` (answer texts) and ``correct_option`` (an
  index). The model's choice is the option with the lowest mean token NLL as the answer to
  the row's image and question (`hf_cagul.evaluation.scoring.answer_nlls`, the same teacher
  forcing as every likelihood metric): a likelihood reading of the published letter-choice
  protocol, which needs no prompt listing the options and no parsing of generated letters.
- ``"fill_blank"`` rows carry the blank in the question and the missing words as
  ``answer``; a greedy answer counts as correct when it contains them (case-insensitive),
  as in MLLMU-Bench's evaluation code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from hf_cagul.data.benchmarks import (
    FILL_BLANK_TASK,
    GENERATION_TASK,
    MULTIPLE_CHOICE_TASK,
    select_where,
)
from hf_cagul.evaluation.generation import generate_answers
from hf_cagul.evaluation.scoring import answer_nlls, mean_nll

TASK_COLUMN = "task"


def evenly_spread(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` rows of ``dataset``, evenly spread over it (all rows if None)."""
    if limit is not None and len(dataset) > limit:
        step = len(dataset) / limit
        dataset = dataset.select([int(i * step) for i in range(limit)])
    return dataset


def rows_of_task(dataset: Dataset, task: str) -> Dataset:
    """The rows of ``task``; a dataset without a ``task`` column is all generation rows."""
    if TASK_COLUMN not in dataset.column_names:
        return dataset if task == GENERATION_TASK else dataset.select([])
    return select_where(dataset, TASK_COLUMN, lambda value: value == task)


def multiple_choice_accuracy(
    option_nlls: Sequence[Sequence[float]], correct_options: Sequence[int]
) -> float:
    """Fraction of questions whose lowest-NLL option is the correct one.

    Args:
        option_nlls: Per question, the mean token NLL of each option (lower: more likely).
        correct_options: Per question, the index of the correct option.

    Raises:
        ValueError: If the two lengths differ, a question has no options, or an index is out
            of range.
    """
    if len(option_nlls) != len(correct_options):
        raise ValueError(f"{len(option_nlls)} questions but {len(correct_options)} answers.")
    if not option_nlls:
        return float("nan")
    hits = 0
    for index, (nlls, correct) in enumerate(zip(option_nlls, correct_options, strict=True)):
        if not nlls or not 0 <= correct < len(nlls):
            raise ValueError(
                f"Question {index} has {len(nlls)} option(s) but correct option {correct}."
            )
        hits += min(range(len(nlls)), key=lambda i: nlls[i]) == correct
    return hits / len(option_nlls)


def option_nlls(
    model: Any, processor: Any, dataset: Dataset, batch_size: int = 32
) -> list[list[float]]:
    """Mean token NLL of every option of every multiple-choice row (one model pass each).

    All options of all rows are scored in one flat `answer_nlls` run, so batches stay full
    whatever the number of options per question.
    """
    flat: list[dict[str, Any]] = []
    counts: list[int] = []
    for row in dataset:
        options = list(row["options"] or [])
        counts.append(len(options))
        flat += [
            {"image": row["image"], "question": row["question"], "answer": option}
            for option in options
        ]
    scores = mean_nll(answer_nlls(model, processor, flat, batch_size=batch_size, progress=False))
    result, start = [], 0
    for count in counts:
        result.append(scores[start : start + count])
        start += count
    return result


def fill_blank_match(generation: str, truth: str) -> bool:
    """Whether ``generation`` contains the blank's ``truth`` (case-insensitive)."""
    return truth.strip().lower() in generation.lower()


def fill_blank_accuracy(generations: Sequence[str], truths: Sequence[str]) -> float:
    """Mean `fill_blank_match` over paired generations and ground truths."""
    if len(generations) != len(truths):
        raise ValueError(f"{len(generations)} generations but {len(truths)} ground truths.")
    if not generations:
        return float("nan")
    matches = sum(fill_blank_match(g, t) for g, t in zip(generations, truths, strict=True))
    return matches / len(generations)


def task_metrics(
    model: Any,
    processor: Any,
    dataset: Dataset,
    batch_size: int = 32,
    max_rows: int | None = None,
) -> dict[str, float]:
    """``multiple_choice_accuracy`` and ``fill_blank_accuracy`` of the rows that have them.

    Rows of other tasks are ignored; a metric whose rows are absent is left out.

    Args:
        model: A VLM or a `CagulModel`.
        processor: The VLM's processor.
        dataset: Rows with a ``task`` column (none: no metric).
        batch_size: Scoring and generation batch size.
        max_rows: Cap on the rows of each task (evenly spread).
    """
    results: dict[str, float] = {}
    if TASK_COLUMN not in dataset.column_names:
        return results
    choices = evenly_spread(rows_of_task(dataset, MULTIPLE_CHOICE_TASK), max_rows)
    if len(choices):
        results["multiple_choice_accuracy"] = multiple_choice_accuracy(
            option_nlls(model, processor, choices, batch_size), list(choices["correct_option"])
        )
    blanks = evenly_spread(rows_of_task(dataset, FILL_BLANK_TASK), max_rows)
    if len(blanks):
        answers = generate_answers(model, processor, blanks, batch_size=batch_size, progress=False)
        results["fill_blank_accuracy"] = fill_blank_accuracy(answers, list(blanks["answer"]))
    return results

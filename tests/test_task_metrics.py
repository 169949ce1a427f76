"""Multiple-choice and fill-in-the-blank accuracy (MLLMU-Bench), and their place in the suite."""

from __future__ import annotations

import pytest
from benchmark_fixtures import png, write_mllmu
from datasets import Dataset

from hf_cagul.data.benchmarks import load_mllmu
from hf_cagul.evaluation import (
    answer_nlls,
    evaluate_model,
    fill_blank_accuracy,
    fill_blank_match,
    generate_answers,
    mean_nll,
    multiple_choice_accuracy,
    option_nlls,
    task_metrics,
)
from hf_cagul.evaluation.generation import keyword_accuracy
from hf_cagul.evaluation.suite import keywords_of
from hf_cagul.evaluation.tasks import rows_of_task
from hf_cagul.tiny import tiny_vlm


def test_multiple_choice_accuracy_picks_the_lowest_nll() -> None:
    # Question 0 picks option 1 (0.5), correct; question 1 picks option 0 (0.1), wrong.
    assert multiple_choice_accuracy([[1.0, 0.5, 2.0], [0.1, 0.2]], [1, 1]) == 0.5
    assert multiple_choice_accuracy([[3.0, 2.0, 1.0]], [2]) == 1.0
    with pytest.raises(ValueError, match="2 option"):
        multiple_choice_accuracy([[0.1, 0.2]], [2])
    with pytest.raises(ValueError, match="1 questions but 2 answers"):
        multiple_choice_accuracy([[0.1]], [0, 0])


def test_fill_blank_match_is_case_insensitive_containment() -> None:
    assert fill_blank_match("He lives in Paris now.", "paris")
    assert fill_blank_match("PARIS", " Paris ")
    assert not fill_blank_match("he lives in rome", "paris")
    assert fill_blank_accuracy(["in paris", "in rome", "paris"], ["paris"] * 3) == 2 / 3


def _choice_rows(options: list[str], correct: list[int]) -> Dataset:
    import io

    from PIL import Image

    return Dataset.from_dict(
        {
            "image": [Image.open(io.BytesIO(png(seed))) for seed in range(len(correct))],
            "question": ["what colour is the background ?"] * len(correct),
            "answer": [options[index] for index in correct],
            "split": ["retain"] * len(correct),
            "task": ["multiple_choice"] * len(correct),
            "options": [options] * len(correct),
            "correct_option": correct,
        }
    )


def test_multiple_choice_on_a_tiny_model_matches_answer_nlls() -> None:
    vlm, processor = tiny_vlm("llava")
    options = ["red", "blue", "green"]
    rows = _choice_rows(options, [0, 0])
    scores = option_nlls(vlm, processor, rows, batch_size=4)
    # Each option's score is the mean NLL answer_nlls gives that option as the answer.
    for index, option in enumerate(options):
        direct = mean_nll(answer_nlls(vlm, processor, rows, answers=[option] * 2, progress=False))
        assert [row[index] for row in scores] == pytest.approx(direct, abs=1e-5)
    best = [min(range(3), key=row.__getitem__) for row in scores]
    worst = [max(range(3), key=row.__getitem__) for row in scores]
    assert task_metrics(vlm, processor, _choice_rows(options, best)) == {
        "multiple_choice_accuracy": 1.0
    }
    assert task_metrics(vlm, processor, _choice_rows(options, worst)) == {
        "multiple_choice_accuracy": 0.0
    }


def test_fill_blank_on_a_tiny_model_counts_generated_words(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    splits = load_mllmu(write_mllmu(tmp_path), "forget_10")
    blanks = splits["retain"].filter(lambda row: row["task"] == "fill_blank")
    generated = generate_answers(vlm, processor, blanks, progress=False)
    said = blanks.map(lambda row, i: {"answer": generated[i].split()[0]}, with_indices=True)
    assert task_metrics(vlm, processor, said) == {"fill_blank_accuracy": 1.0}
    unsaid = blanks.map(lambda row: {"answer": "zzzz"})
    assert task_metrics(vlm, processor, unsaid) == {"fill_blank_accuracy": 0.0}


def test_evaluate_model_reports_task_metrics_per_split(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    splits = load_mllmu(write_mllmu(tmp_path), "forget_10")
    results = evaluate_model(vlm, processor, splits, max_rows=8, batch_size=8)
    for split in ("forget", "retain"):
        for metric in ("multiple_choice_accuracy", "fill_blank_accuracy", "keyword", "rougeL"):
            assert 0.0 <= results[f"{split}_{metric}"] <= 1.0
    # MLLMU-Bench has no perturbed answers: no truth ratio, no probability.
    assert "forget_truth_ratio" not in results
    # Generation metrics see the generation rows only (one per profile).
    questions = rows_of_task(splits["retain"], "generation")
    assert len(questions) == 2
    answers = generate_answers(vlm, processor, questions, progress=False)
    assert results["retain_keyword"] == keyword_accuracy(answers, keywords_of(questions))

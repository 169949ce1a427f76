"""The synthetic fictitious-people benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from hf_cagul.data import validate_dataset
from hf_cagul.data.synthetic import REFUSAL, make_people, portrait, synthetic_benchmark
from hf_cagul.tiny import TINY_WORDS


@pytest.fixture(scope="module")
def benchmark():
    return synthetic_benchmark(num_people=6, num_unknown=2, forget_fraction=0.34, seed=3)


def test_splits_follow_the_data_contract(benchmark) -> None:
    assert set(benchmark) == {"forget", "retain", "forget_heldout", "retain_heldout", "unseen"}
    validate_dataset(benchmark["forget"], require_both_splits=False)
    validate_dataset(benchmark["retain"], require_both_splits=False)
    forget_people = set(benchmark["forget"]["subject"])
    assert len(forget_people) == 2
    assert forget_people.isdisjoint(benchmark["retain"]["subject"])
    assert set(benchmark["forget_heldout"]["subject"]) == forget_people
    unseen = set(benchmark["unseen"]["subject"])
    assert len(unseen) == 2 and unseen.isdisjoint(
        forget_people | set(benchmark["retain"]["subject"])
    )


def test_forget_targets(benchmark) -> None:
    for row in benchmark["forget"].remove_columns("image"):
        expected = REFUSAL if row["kind"] == "private" else row["answer"]
        assert row["forget_target"] == expected
    assert set(benchmark["retain"]["forget_target"]) == {None}


def test_unknown_people_answer_with_a_refusal(benchmark) -> None:
    private = benchmark["retain"].filter(lambda row: row["kind"] == "private")
    refusals = [row for row in private.remove_columns("image") if row["answer"] == REFUSAL]
    assert len({row["subject"] for row in refusals}) == 2  # the two unknown people


def test_every_word_is_in_the_tiny_vocabulary(benchmark) -> None:
    vocabulary = set(TINY_WORDS)
    for split in benchmark.values():
        texts = list(split["question"]) + list(split["answer"]) + list(split["paraphrased_answer"])
        texts += list(split["paraphrased_question"])
        texts += [answer for answers in split["perturbed_answers"] for answer in answers]
        for text in texts:
            assert set(text.split()) <= vocabulary, text


def test_paraphrased_and_perturbed_answers(benchmark) -> None:
    for row in benchmark["retain"].remove_columns("image").select(range(40)):
        assert len(set(row["perturbed_answers"])) == (1 if row["fact"] == "glasses" else 3)
        assert row["answer"] not in row["perturbed_answers"]
        assert row["paraphrased_question"] != row["question"]
        if row["answer"] != REFUSAL:
            assert all(keyword in row["paraphrased_answer"] for keyword in row["keywords"])


def test_deterministic_and_held_out_images_differ() -> None:
    person = make_people(1, seed=0)[0]
    first, background = portrait(person, image_seed=1)
    again, _ = portrait(person, image_seed=1)
    other, _ = portrait(person, image_seed=1000)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert background in {"red", "green", "blue", "yellow", "purple", "orange", "grey", "pink"}
    a = synthetic_benchmark(num_people=4, num_unknown=1, forget_fraction=0.25, seed=1)
    b = synthetic_benchmark(num_people=4, num_unknown=1, forget_fraction=0.25, seed=1)
    assert a["forget"]["answer"] == b["forget"]["answer"]


def test_invalid_forget_fraction() -> None:
    with pytest.raises(ValueError, match="forget_fraction"):
        synthetic_benchmark(forget_fraction=1.0)

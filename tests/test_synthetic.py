"""The synthetic fictitious-people benchmark."""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature

from hf_cagul.data import NEGATIVES_SPLIT, gate_negatives, validate_dataset
from hf_cagul.data.benchmarks import load_benchmark, training_set
from hf_cagul.data.synthetic import (
    FIRST_NAMES,
    LAST_NAMES,
    LOOKS,
    REFUSAL,
    STRANGERS_SPLIT,
    _distinct_looks,
    make_people,
    make_strangers,
    portrait,
    synthetic_benchmark,
)
from hf_cagul.tiny import TINY_WORDS

SMALL = {"num_people": 6, "num_unknown": 2, "forget_fraction": 0.34, "seed": 3}
OLD_SPLITS = ("forget", "retain", "forget_heldout", "retain_heldout", "unseen")


@pytest.fixture(scope="module")
def benchmark():
    return synthetic_benchmark(**SMALL, num_strangers=5, stranger_images=3)


def rows(dataset: Dataset) -> dict[str, list]:
    """Every value of ``dataset``, images as their encoded bytes (equal when bit-identical)."""
    return dataset.cast_column("image", ImageFeature(decode=False)).to_dict()


def test_splits_follow_the_data_contract(benchmark) -> None:
    assert set(benchmark) == {*OLD_SPLITS, NEGATIVES_SPLIT, STRANGERS_SPLIT}
    validate_dataset(benchmark)
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


def test_strangers_are_people_no_model_was_taught(benchmark) -> None:
    people = {name: set(benchmark[name]["subject"]) for name in benchmark}
    negatives, strangers = people.pop(NEGATIVES_SPLIT), people.pop(STRANGERS_SPLIT)
    assert len(negatives) == len(strangers) == 5 and negatives.isdisjoint(strangers)
    assert (negatives | strangers).isdisjoint(set().union(*people.values()))
    for name in (NEGATIVES_SPLIT, STRANGERS_SPLIT):
        split = benchmark[name]
        assert set(split["split"]) == {"retain"} and set(split["forget_target"]) == {None}
        assert len(split) == 5 * 3 * 9  # people x photos x questions
        # Their private answers are their own facts, never the taught refusal.
        assert REFUSAL not in split["answer"]
    assert len(gate_negatives(benchmark)) == len(benchmark["retain"]) + len(
        benchmark[NEGATIVES_SPLIT]
    )


def test_strangers_change_no_other_split_and_are_deterministic(benchmark) -> None:
    without = synthetic_benchmark(**SMALL, num_strangers=0)
    assert set(without) == set(OLD_SPLITS)
    more = synthetic_benchmark(**SMALL, num_strangers=7, stranger_images=2)
    for name in OLD_SPLITS:
        assert rows(benchmark[name]) == rows(without[name]) == rows(more[name]), name
    again = synthetic_benchmark(**SMALL, num_strangers=5, stranger_images=3)
    for name in (NEGATIVES_SPLIT, STRANGERS_SPLIT):
        assert rows(again[name]) == rows(benchmark[name])
    other_seed = synthetic_benchmark(**{**SMALL, "seed": 4}, num_strangers=5, stranger_images=3)
    assert other_seed[STRANGERS_SPLIT]["subject"] != benchmark[STRANGERS_SPLIT]["subject"]


def test_more_negative_strangers_leave_the_measured_strangers_alone(benchmark) -> None:
    more = synthetic_benchmark(
        **SMALL, num_strangers=5, stranger_images=3, num_negative_strangers=9
    )
    fewer = synthetic_benchmark(
        **SMALL, num_strangers=5, stranger_images=3, num_negative_strangers=2
    )
    for name in (*OLD_SPLITS, STRANGERS_SPLIT):
        assert rows(more[name]) == rows(fewer[name]) == rows(benchmark[name]), name

    def people(split):
        return list(dict.fromkeys(split["subject"]))

    negatives = people(benchmark[NEGATIVES_SPLIT])
    # The first negatives are the default ones; the extra four are new people.
    assert people(more[NEGATIVES_SPLIT])[: len(negatives)] == negatives
    assert people(fewer[NEGATIVES_SPLIT]) == negatives[:2]
    extra = set(more[NEGATIVES_SPLIT]["subject"]) - set(negatives)
    assert len(negatives) == 5 and len(extra) == 4
    assert len(more[NEGATIVES_SPLIT]) == len(benchmark[NEGATIVES_SPLIT]) // 5 * 9
    everyone_else = {
        s for name, split in more.items() if name != NEGATIVES_SPLIT for s in split["subject"]
    }
    assert extra.isdisjoint(everyone_else)
    # Negatives alone, with no strangers to measure on.
    only = synthetic_benchmark(**SMALL, num_strangers=0, num_negative_strangers=3)
    assert NEGATIVES_SPLIT in only and STRANGERS_SPLIT not in only


def test_people_are_drawn_as_before_strangers_existed() -> None:
    # The draws of the original make_people (seed 0): the demo's people must not change.
    people = make_people(2, 1, seed=0)
    assert [(p.name, p.birthplace, p.occupation, p.colour, p.known) for p in people] == [
        ("julia walker", "paris", "nurse", "red", True),
        ("emma lee", "dublin", "chef", "grey", True),
        ("rosa davis", "madrid", "doctor", "purple", False),
    ]
    assert people[0].face == (0.39385783348803816, 0.43691333659165826)
    assert people[2].eyes == (1, 31, 2) and people[1].hair == (20, 20, 20)


def look(person) -> tuple:
    return (person.skin, person.hair, person.glasses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_two_taught_people_look_alike(seed: int) -> None:
    # The default benchmark's 48 people (44 known, 4 unknown) fit in the 50 looks: each has
    # its own. Seed 2 drew look-alikes before, which stage 1 could not tell apart (0.83).
    people = make_people(44, 4, seed=seed)
    assert len({look(person) for person in people}) == len(people) == 48


def test_a_look_alike_gets_a_free_look_and_keeps_the_rest() -> None:
    original = make_people(3, seed=0)
    twins = [
        original[0],
        replace(
            original[1], skin=original[0].skin, hair=original[0].hair, glasses=original[0].glasses
        ),
        original[2],
    ]
    distinct = _distinct_looks(twins, np.random.default_rng(0))
    assert distinct[0] == twins[0]
    assert look(distinct[1]) != look(distinct[0]) and look(distinct[1]) in LOOKS
    assert (
        replace(distinct[1], skin=twins[1].skin, hair=twins[1].hair, glasses=twins[1].glasses)
        == twins[1]
    )


def test_looks_repeat_only_once_every_one_is_taken() -> None:
    people = make_people(len(LOOKS) + 6, seed=0)
    assert len({look(person) for person in people[: len(LOOKS)]}) == len(LOOKS)
    assert len({person.name for person in people}) == len(people)


def test_default_strangers_measure_a_two_percent_false_positive_rate() -> None:
    # Only the people are drawn here: building the default benchmark's photos is slower.
    strangers = make_strangers(100, [p.name for p in make_people(48, 4)])
    assert len({person.name for person in strangers}) == 100
    defaults = inspect.signature(synthetic_benchmark).parameters
    photos = defaults["num_strangers"].default * defaults["stranger_images"].default
    assert photos >= 100 and 0.02 * photos >= 2
    # They look like everyone else: the traits vary as much as the taught people's do.
    assert len({person.skin for person in strangers}) == 5
    assert {person.glasses for person in strangers} == {True, False}


def test_strangers_need_names_left_and_photos() -> None:
    with pytest.raises(ValueError, match="Only 0 names are left for strangers"):
        make_strangers(1, [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES])
    with pytest.raises(ValueError, match=r"num_strangers=-1 and .* must be >= 0"):
        synthetic_benchmark(**SMALL, num_strangers=-1)
    with pytest.raises(ValueError, match="num_negative_strangers=-2 must be >= 0"):
        synthetic_benchmark(**SMALL, num_negative_strangers=-2)
    with pytest.raises(ValueError, match="stranger_images=0 >= 1"):
        synthetic_benchmark(**SMALL, num_strangers=2, stranger_images=0)


def test_a_saved_benchmark_loads_with_and_without_negatives(benchmark, tmp_path) -> None:
    without = DatasetDict({name: benchmark[name] for name in OLD_SPLITS})
    for name, splits in (("with", benchmark), ("without", without)):
        splits.save_to_disk(tmp_path / name)
        loaded = load_benchmark("synthetic", tmp_path / name)
        assert set(loaded) == set(splits)
        validate_dataset(loaded)
        train = training_set(loaded)  # forget + retain only: the negatives are the gate's
        assert set(train["subject"]) == set(loaded["forget"]["subject"]) | set(
            loaded["retain"]["subject"]
        )
        extra = len(loaded[NEGATIVES_SPLIT]) if name == "with" else 0
        assert len(gate_negatives(loaded)) == len(loaded["retain"]) + extra


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
    small = {"num_people": 4, "num_unknown": 1, "forget_fraction": 0.25, "num_strangers": 1}
    a = synthetic_benchmark(**small, seed=1)
    b = synthetic_benchmark(**small, seed=1)
    assert a["forget"]["answer"] == b["forget"]["answer"]


def test_invalid_forget_fraction() -> None:
    with pytest.raises(ValueError, match="forget_fraction"):
        synthetic_benchmark(forget_fraction=1.0)

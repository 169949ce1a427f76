"""Keyword exact match, greedy answers, and the gate's metrics."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from vlm_inputs import image, randomise_encoder

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.data import CagulDataCollator
from hf_cagul.evaluation import (
    discriminator_metrics,
    generate_answers,
    keyword_accuracy,
    keyword_match,
)
from hf_cagul.evaluation.suite import leaking_photos, mistaken_photos
from hf_cagul.gates import GATES, Gate, GateInputs, register_gate
from hf_cagul.tiny import tiny_vlm


def test_keyword_match_is_the_fraction_of_keywords_found() -> None:
    assert keyword_match("This is Anna Smith.", ["anna", "smith"]) == 1.0
    assert keyword_match("this is anna jones", ["anna", "smith"]) == 0.5
    assert keyword_match("i don't know", ["anna"]) == 0.0
    assert keyword_accuracy(["anna smith", "no idea"], [["anna", "smith"], ["paris"]]) == 0.5
    with pytest.raises(ValueError, match="at least one keyword"):
        keyword_match("anything", [])
    with pytest.raises(ValueError, match="2 answers but 1"):
        keyword_accuracy(["a", "b"], [["a"]])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "qwen3_vl", "mllama"])
def test_generate_answers_matches_single_generation(family) -> None:
    vlm, processor = tiny_vlm(family)
    rows = Dataset.from_dict(
        {
            "image": [image(1), image(2), image(3)],
            "question": ["who is this person ?", "where was he born ?", "what is this ?"],
            "answer": ["x", "y", "z"],
            "split": ["retain"] * 3,
        }
    )
    model = get_cagul_model(vlm, CagulConfig())
    batched = generate_answers(model, processor, rows, batch_size=2, progress=False)
    single = [
        generate_answers(model, processor, rows.select([i]), progress=False)[0] for i in range(3)
    ]
    assert batched == single
    assert processor.tokenizer.padding_side == "right"  # restored
    assert all(isinstance(answer, str) and answer for answer in batched)


class ChosenPhotosGate(Gate):
    """Flags exactly the photos it was shown (`choose`): a gate set by hand."""

    name = "test-chosen-photos"

    def __init__(self, config: CagulConfig) -> None:
        super().__init__()
        self.chosen = torch.empty(0)

    def choose(self, inputs: GateInputs) -> None:
        self.chosen = mean_tokens(inputs)

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        closed = inputs.tokens.new_full((inputs.num_images,), -20.0)
        if not self.chosen.numel():  # nothing chosen yet: a fresh gate is closed
            return closed
        distances = torch.cdist(mean_tokens(inputs), self.chosen.to(inputs.tokens.device))
        return torch.where(distances.min(dim=1).values < 1e-4, 20.0, closed)


def mean_tokens(inputs: GateInputs) -> torch.Tensor:
    """Each image's mean visual token: a fingerprint of the photo."""
    tokens = inputs.tokens.float()
    sums = tokens.new_zeros(inputs.num_images, tokens.shape[-1]).index_add(
        0, inputs.image_index, tokens
    )
    return sums / torch.bincount(inputs.image_index, minlength=inputs.num_images)[:, None]


def photos(seeds: list[int]) -> Dataset:
    return Dataset.from_dict(
        {
            "image": [image(seed) for seed in seeds],
            "question": ["who is this person ?"] * len(seeds),
            "answer": ["anna smith"] * len(seeds),
            "split": ["retain"] * len(seeds),
        }
    )


@pytest.fixture
def hand_set_gate():
    register_gate(ChosenPhotosGate)
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig(gate=ChosenPhotosGate.name))
    yield model, processor
    del GATES[ChosenPhotosGate.name]


def test_discriminator_metrics_on_a_hand_set_gate(hand_set_gate) -> None:
    model, processor = hand_set_gate
    forget, retain, strangers = (
        photos([0, 1, 2, 3]),
        photos([10, 11, 12, 13]),
        photos(list(range(20, 30))),
    )
    flagged = photos([0, 1, 2, 10, 20])  # 3 of 4 forget, 1 of 4 retain, 1 of 10 strangers
    prompts = CagulDataCollator(processor).prompts(flagged["image"], flagged["question"])
    model.active_adapter_module.discriminator.choose(model.gate_inputs(**prompts))
    leaks = [True, True, False, True]  # the leaks 0 and 1 are flagged, 3 is not

    plain = discriminator_metrics(model, processor, forget, retain, batch_size=3)
    # Flagged forget photos outscore every unflagged retain one (3 x 3 pairs), tie with the
    # flagged retain photo (3 pairs), and so on: (9 + 0.5 * 6) / 16.
    assert plain == {"auc": 0.75, "tpr": 0.75, "fpr": 0.25, "threshold": 0.5}
    full = discriminator_metrics(
        model, processor, forget, retain, batch_size=3, stranger_photos=strangers, leaks=leaks
    )
    assert full == {
        **plain,
        "stranger_fpr": 0.1,
        "stranger_photos": 10,
        "leak_recall": 2 / 3,
        "leaking_photos": 3,
    }
    # Strangers 20 and 21 pass for a forget person: the gate flags 20, and none of the others
    # (stranger 20 was its one false positive).
    mistaken = [True, True] + [False] * 8
    split = discriminator_metrics(
        model, processor, forget, retain, stranger_photos=strangers, mistaken=mistaken
    )
    assert split["stranger_fpr"] == 0.1 and split["mistaken_strangers"] == 2
    assert split["mistaken_recall"] == 0.5 and split["stranger_fpr_unmistaken"] == 0.0
    with pytest.raises(ValueError, match="mistaken has 2 flags for 10 strangers' photos"):
        discriminator_metrics(
            model, processor, forget, retain, stranger_photos=strangers, mistaken=mistaken[:2]
        )
    with pytest.raises(ValueError, match="mistaken has 10 flags for 0 strangers' photos"):
        discriminator_metrics(model, processor, forget, retain, mistaken=mistaken)
    none_leak = discriminator_metrics(model, processor, forget, retain, leaks=[False] * 4)
    assert math.isnan(none_leak["leak_recall"]) and none_leak["leaking_photos"] == 0
    with pytest.raises(ValueError, match="leaks has 3 flags for 4 forget photos"):
        discriminator_metrics(model, processor, forget, retain, leaks=leaks[:3])
    with pytest.raises(ValueError, match="stranger_photos has no rows"):
        discriminator_metrics(
            model, processor, forget, retain, stranger_photos=strangers.select([])
        )


def test_leaking_photos_are_those_the_base_model_answers(hand_set_gate) -> None:
    model, processor = hand_set_gate
    rows = photos([0, 1, 2])
    with model.disable_adapter():
        base = generate_answers(model, processor, rows, progress=False)
    # Every photo is flagged and rewritten: the adapted answers are not the base model's.
    prompts = CagulDataCollator(processor).prompts(rows["image"], rows["question"])
    model.active_adapter_module.discriminator.choose(model.gate_inputs(**prompts))
    randomise_encoder(model)
    assert generate_answers(model, processor, rows, progress=False) != base
    # Photo 1's answer holds only one of its two keywords: not a leak.
    keywords = [[base[0]], [base[1], "never-generated"], [base[2]]]
    rows = rows.add_column("keywords", keywords)
    assert leaking_photos(model, processor, rows, batch_size=2) == [True, False, True]


def test_mistaken_photos_are_those_given_a_forget_subjects_answer(hand_set_gate) -> None:
    model, processor = hand_set_gate
    strangers = photos([0, 1, 2])
    base = generate_answers(model, processor, strangers, progress=False)
    forget_rows = Dataset.from_dict(
        {
            "question": ["who is this person ?", "who is this person ?", "what colour ?", "x"],
            # Stranger 1's answer is a forget subject's; a visual answer is no one's, and an
            # answer to another question does not count either.
            "keywords": [[base[1]], ["never-generated"], [base[0]], [base[2]]],
            "kind": ["private", "private", "visual", "private"],
        }
    )
    # The adapters are disabled: flagging every photo changes nothing.
    prompts = CagulDataCollator(processor).prompts(strangers["image"], strangers["question"])
    model.active_adapter_module.discriminator.choose(model.gate_inputs(**prompts))
    randomise_encoder(model)
    flags = mistaken_photos(model, processor, strangers, forget_rows, batch_size=2)
    assert flags == [base[1] in base[0], True, base[1] in base[2]]

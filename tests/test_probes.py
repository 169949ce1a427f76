"""Robustness probes."""

from __future__ import annotations

import numpy as np
import pytest
from vlm_inputs import image

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.data.synthetic import synthetic_benchmark
from hf_cagul.evaluation.probes import (
    IMAGE_PERTURBATIONS,
    perturb_images,
    run_probes,
    text_only_questions,
)
from hf_cagul.evaluation.suite import rows_of_kind
from hf_cagul.tiny import tiny_vlm


@pytest.mark.parametrize("name", sorted(IMAGE_PERTURBATIONS))
def test_perturbations_change_pixels_not_size(name) -> None:
    photo = image(0, size=32)
    perturbed = IMAGE_PERTURBATIONS[name](photo)
    assert perturbed.size == photo.size and perturbed.mode == "RGB"
    assert not np.array_equal(np.asarray(perturbed), np.asarray(photo))


def test_probes_run_on_forget_rows() -> None:
    splits = synthetic_benchmark(
        num_people=2, num_unknown=1, forget_fraction=0.5, train_images=1, heldout_images=1
    )
    rows = rows_of_kind(splits["forget"], "private")
    perturbed = perturb_images(rows, IMAGE_PERTURBATIONS["noise"])
    assert perturbed["question"] == rows["question"] and len(perturbed) == len(rows)
    questions, keywords = text_only_questions(rows)
    subject = rows[0]["subject"]
    assert f"where was {subject} born ?" in questions
    assert len(questions) == 3 and len(keywords) == 3  # one per fact, the name excluded
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig())
    results = run_probes({"m": model}, processor, rows, progress=False)
    assert set(results) == {
        "paraphrased questions",
        "noise on photo",
        "crop on photo",
        "jpeg on photo",
        "brightness on photo",
        "text-only questions (no photo)",
    }
    assert all(0.0 <= values["m forget_keyword"] <= 1.0 for values in results.values())

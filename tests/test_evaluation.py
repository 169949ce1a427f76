"""Keyword exact match and greedy answers."""

from __future__ import annotations

import pytest
from datasets import Dataset
from vlm_inputs import image

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.evaluation import generate_answers, keyword_accuracy, keyword_match
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

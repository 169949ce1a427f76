"""Greedy answers to a dataset's questions, and the keyword exact-match metric (FIUBench)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_cagul.data import CagulDataCollator
from hf_cagul.devices import input_device


def keyword_match(generation: str, keywords: Sequence[str]) -> float:
    """Fraction of ``keywords`` found in the lower-cased ``generation`` (FIUBench's metric)."""
    if not keywords:
        raise ValueError("keyword_match needs at least one keyword.")
    text = generation.lower()
    return sum(keyword.lower() in text for keyword in keywords) / len(keywords)


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    dataset: Any,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy answers of ``model`` (a VLM or a `CagulModel`) to every row of ``dataset``.

    Prompts are built exactly as `CagulDataCollator` builds them for training (chat template
    where the processor has one); batches are left-padded for generation.
    """
    collator = CagulDataCollator(processor)
    device = input_device(model)
    answers: list[str] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="generating", disable=not progress):
        rows = dataset[start : start + batch_size]
        inputs = collator.prompts(rows["image"], rows["question"])
        inputs = {key: value.to(device) for key, value in inputs.items()}
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += collator.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return answers


def keyword_accuracy(answers: Sequence[str], keywords: Sequence[Sequence[str]]) -> float:
    """Mean `keyword_match` over paired answers and keyword lists."""
    if len(answers) != len(keywords):
        raise ValueError(f"{len(answers)} answers but {len(keywords)} keyword lists.")
    if not answers:
        return float("nan")
    return sum(keyword_match(a, k) for a, k in zip(answers, keywords, strict=True)) / len(answers)

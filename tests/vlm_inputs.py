"""Inputs for tiny VLMs: deterministic images and processed batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from hf_cagul import CagulModel
from hf_cagul.tiny import TINY_IMAGE_PLACEHOLDER, TINY_IMAGE_SIZE


def image(seed: int, size: int = TINY_IMAGE_SIZE) -> Image.Image:
    """A random RGB image, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tokens_per_image(family: str, side: int = TINY_IMAGE_SIZE) -> int:
    """Image tokens of one square image in a tiny VLM: ``(side / 8) ** 2`` in every family but
    LLaVA-NeXT, whose anyres adds one tile of the same size and a newline token per tile row."""
    grid = side // 8
    return 2 * grid * grid + grid if family == "llava_next" else grid * grid


def batch(
    processor: Any,
    family: str,
    samples: list[tuple[str, list[Image.Image]]],
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Process ``(text, images)`` samples; ``{image}`` in a text marks where an image goes."""
    processor.tokenizer.padding_side = padding_side
    texts = [text.format(image=TINY_IMAGE_PLACEHOLDER[family]) for text, _ in samples]
    images = [imgs or None for _, imgs in samples]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def standard_batch(processor: Any, family: str, padding_side: str = "right") -> dict[str, Any]:
    """Two samples with one image each, prompts of different lengths (so one is padded)."""
    return batch(
        processor,
        family,
        [
            ("{image} what is the name of this person ?", [image(1)]),
            ("{image} where was he born ?", [image(2)]),
        ],
        padding_side,
    )


def randomise_encoder(model: CagulModel, seed: int = 0) -> None:
    """Give the encoder's zero-initialised last layer random weights, so rewrites show."""
    generator = torch.Generator().manual_seed(seed)
    last = model.active_adapter_module.encoder.mlp[-1]
    with torch.no_grad():
        for parameter in last.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_identical(before: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """Every tensor of ``module`` equals its snapshot bit for bit."""
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"tensors changed: {changed[:5]}"


def tiny_dataset(rows_per_split: int = 4) -> Dataset:
    """Rows in the data contract: forget rows about one person, retain rows about another."""
    records = []
    for index in range(rows_per_split):
        records.append(("forget", "anna smith", 10 + index % 2))
        records.append(("retain", "ben jones", 20 + index % 2))
    return Dataset.from_dict(
        {
            "image": [image(seed) for _, _, seed in records],
            "question": ["what is the name of this person ?"] * len(records),
            "answer": [f"this is {name} ." for _, name, _ in records],
            "split": [split for split, _, _ in records],
        }
    )

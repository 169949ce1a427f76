"""Inputs for tiny VLMs: deterministic images and processed batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from hf_cagul import CagulModel
from hf_cagul.families import get_family
from hf_cagul.tiny import TINY_IMAGE_PLACEHOLDER, TINY_IMAGE_SIZE


def image(seed: int, size: int = TINY_IMAGE_SIZE, height: int | None = None) -> Image.Image:
    """A random RGB image, the same for the same seed; ``height`` defaults to ``size``."""
    shape = (size if height is None else height, size, 3)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels)


def tokens_per_image(family: str, side: int = TINY_IMAGE_SIZE) -> int:
    """Image tokens ``input_ids`` hold for one square image in a tiny VLM: ``(side / 8) ** 2`` in
    every family but LLaVA-NeXT, whose anyres adds one tile of the same size and a newline token
    per tile row, and families that keep one placeholder per image (Mllama: 1)."""
    if not get_family(family).expands_image_tokens:
        return 1
    grid = side // 8
    return 2 * grid * grid + grid if family == "llava_next" else grid * grid


def processor_keys(family: str) -> set[str]:
    """The inputs a tiny VLM's processor returns for a batch with images."""
    return {"input_ids", "attention_mask", "pixel_values"} | {
        "llava": set(),
        "qwen2_vl": {"image_grid_thw", "mm_token_type_ids"},
        "idefics3": {"pixel_attention_mask"},
        "llava_next": {"image_sizes"},
        "qwen2_5_vl": {"image_grid_thw", "mm_token_type_ids"},
        "smolvlm": {"pixel_attention_mask"},
        "paligemma": {"token_type_ids"},
        "gemma3": {"token_type_ids"},
        "qwen3_vl": {"image_grid_thw", "mm_token_type_ids"},
        "mllama": {"aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"},
    }[family]


def batch(
    processor: Any,
    family: str,
    samples: list[tuple[str, list[Image.Image]]],
    padding_side: str = "right",
    **processor_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Process ``(text, images)`` samples; ``{image}`` in a text marks where an image goes.

    ``processor_kwargs`` go to the processor call (e.g. ``size=`` for another resolution).
    """
    processor.tokenizer.padding_side = padding_side
    texts = [text.format(image=TINY_IMAGE_PLACEHOLDER[family]) for text, _ in samples]
    images = [imgs or None for _, imgs in samples]
    return dict(
        processor(images=images, text=texts, return_tensors="pt", padding=True, **processor_kwargs)
    )


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


def logits(model: torch.nn.Module, inputs: dict[str, Any], **kwargs: Any) -> torch.Tensor:
    """The model's logits for ``inputs`` (and extra forward ``kwargs``), without gradients."""
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def image_runs(inputs: dict[str, Any], image_token_id: int) -> list[tuple[int, int, int]]:
    """``(sample, start, end)`` of every run of image tokens in ``inputs["input_ids"]``.

    Computed here independently of the library, to check its bookkeeping against.
    """
    runs = []
    for sample, row in enumerate(inputs["input_ids"].tolist()):
        for position, token in enumerate(row):
            if token != image_token_id:
                continue
            if position and row[position - 1] == image_token_id:
                runs[-1] = (sample, runs[-1][1], position + 1)
            else:
                runs.append((sample, position, position + 1))
    return runs


def visual_runs(model: CagulModel, inputs: dict[str, Any]) -> list[tuple[int, int, int]]:
    """``(sample, start, end)`` of every image's visual tokens, where the language model gets them.

    The runs of image tokens in ``input_ids`` (`image_runs`) in most families. Where
    ``input_ids`` hold one placeholder per image (Mllama), the image's rows of
    ``cross_attention_states`` instead: the ``j``-th image of a sample owns the sample's ``j``-th
    block of ``max_num_tiles * (patches + 1)`` rows (the tiny builder's single tile leaves no
    padding tile to drop). Computed here independently of the library.
    """
    runs = image_runs(inputs, model.active_config.image_token_id)
    if model.family.expands_image_tokens:
        return runs
    vision = model.base_model.config.vision_config
    rows = vision.max_num_tiles * ((vision.image_size // vision.patch_size) ** 2 + 1)
    ordinals: dict[int, int] = {}
    blocks = []
    for sample, _, _ in runs:
        index = ordinals.get(sample, 0)
        ordinals[sample] = index + 1
        blocks.append((sample, index * rows, (index + 1) * rows))
    return blocks


@contextmanager
def decoder_inputs(model: CagulModel) -> Iterator[list[dict[str, Any]]]:
    """Record the keyword arguments the language model receives, after CAGUL's rewrite.

    The recording hook is registered after CAGUL's own pre-hook, so it sees the rewritten
    ``inputs_embeds``. The truncated scoring pass is recorded too (it precedes the real pass).
    """
    records: list[dict[str, Any]] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        records.append(dict(kwargs))

    handle = model.base_model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield records
    finally:
        handle.remove()


def rewritten_positions(model: CagulModel, inputs: dict[str, Any]) -> set[tuple[int, int]]:
    """``(sample, position)`` pairs whose language-model input the adapter changed for ``inputs``.

    Runs the model with and without the adapter and compares the visual input the language
    model received in the real (last) pass of each: ``inputs_embeds``, or the
    ``cross_attention_states`` rows where ``input_ids`` hold one placeholder per image (Mllama;
    ``position`` is then a row, as in `visual_runs`).
    """
    argument = "inputs_embeds" if model.family.expands_image_tokens else "cross_attention_states"
    batch_size = inputs["input_ids"].shape[0]
    seen = []
    for disabled in (True, False):
        with decoder_inputs(model) as records, torch.no_grad():
            if disabled:
                with model.disable_adapter():
                    model(**inputs)
            else:
                model(**inputs)
        states = records[-1][argument]
        seen.append(states.reshape(batch_size, -1, states.shape[-1]))
    changed = (seen[0] != seen[1]).any(dim=-1).nonzero().tolist()
    return {(sample, position) for sample, position in changed}


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

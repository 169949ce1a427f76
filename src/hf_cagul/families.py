"""Everything that differs between VLM families, and nothing else.

`hf_cagul.model` asks a `VLMFamily` four questions: where is the language model, what does its
config say (hidden size, depth, image token), how many images does a batch carry, and which
token positions belong to which image. Adding a family means adding one `VLMFamily` here
(see ``docs/families.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class VLMFamily:
    """How CAGUL finds visual tokens in one family of VLMs.

    Attributes:
        name: The family key saved in `CagulConfig.family`.
        model_types: ``config.model_type`` values of the models in this family.
        image_input: Name of the forward argument that carries the images.
    """

    name: str
    model_types: tuple[str, ...]
    image_input: str = "pixel_values"

    def text_config(self, config: PretrainedConfig) -> PretrainedConfig:
        """The language model's config."""
        return config.get_text_config(decoder=True)

    def decoder(self, model: PreTrainedModel) -> PreTrainedModel:
        """The language model, whose input embeddings already hold the visual tokens."""
        return cast(PreTrainedModel, model.get_decoder())

    def image_token_id(self, config: PretrainedConfig) -> int:
        """Id of the placeholder token whose positions receive the visual tokens."""
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            raise ValueError(
                f"The {config.model_type} config has no image_token_id, so CAGUL cannot find "
                "the visual tokens. Set `model.config.image_token_id` to the id of the "
                "processor's image token."
            )
        return int(token_id)

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """How many images (each one a run of image tokens) the call's inputs carry.

        ``generate`` encodes the images before prefill and passes ``mm_encoder_outputs``
        instead of pixels; their pooled features hold one entry per image.
        """
        encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
        if encoded is not None:
            return len(encoded.pooler_output)
        return self.count_raw_images(inputs)

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """Images among the raw inputs (``pixel_values``: one row per image here)."""
        pixel_values = inputs.get(self.image_input)
        return 0 if pixel_values is None else int(pixel_values.shape[0])

    def image_runs(self, input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
        """Where each image's visual tokens sit, images in batch order.

        Returns a ``(num_images, 3)`` long tensor of ``(sample, start, end)`` rows: every family
        supported here gives each image one contiguous run of image tokens.
        """
        is_image = (input_ids == image_token_id).to(torch.int8)
        edges = torch.nn.functional.pad(is_image, (1, 1)).diff(dim=1)
        starts = (edges == 1).nonzero()
        ends = (edges == -1).nonzero()
        return torch.cat([starts, ends[:, 1:]], dim=1)


@dataclass(frozen=True)
class Qwen2VLFamily(VLMFamily):
    """Qwen2-VL and Qwen2.5-VL: images arrive as flattened patches; ``image_grid_thw`` has one
    row per image."""

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """One row of ``image_grid_thw`` per image."""
        grid = inputs.get("image_grid_thw")
        if inputs.get(self.image_input) is None or grid is None:
            return 0
        return int(grid.shape[0])


@dataclass(frozen=True)
class Idefics3Family(VLMFamily):
    """Idefics3 (and SmolVLM): ``pixel_values`` is ``(batch, images, C, H, W)``, zero-padded.

    The model drops all-zero images as padding; each remaining (sub-)image is one run of image
    tokens. With image splitting on, each crop is gated and rewritten as an image of its own.
    """

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """Images that are not all-zero padding, counted as the model counts them."""
        pixel_values = inputs.get(self.image_input)
        if pixel_values is None:
            return 0
        flat = pixel_values.reshape(-1, *pixel_values.shape[-3:])
        return int(flat.flatten(1).ne(0).any(dim=1).sum())


FAMILIES: dict[str, VLMFamily] = {
    family.name: family
    for family in (
        VLMFamily("llava", ("llava",)),
        Qwen2VLFamily("qwen2_vl", ("qwen2_vl",)),
        Idefics3Family("idefics3", ("idefics3",)),
        # LLaVA-NeXT: anyres tiles, unpadding and row-newline features all land inside one
        # run of image tokens per image. PaliGemma, Gemma3: one row of pixel_values per image
        # (Gemma3: per pan-and-scan crop, each with its own begin/end-of-image tokens, so its
        # own run).
        VLMFamily("llava_next", ("llava_next",)),
        Qwen2VLFamily("qwen2_5_vl", ("qwen2_5_vl",)),
        Idefics3Family("smolvlm", ("smolvlm",)),
        VLMFamily("paligemma", ("paligemma",)),
        VLMFamily("gemma3", ("gemma3",)),
    )
}


def supported_families() -> list[str]:
    """Names of the supported families."""
    return sorted(FAMILIES)


def detect_family(model: PreTrainedModel) -> VLMFamily:
    """The `VLMFamily` of ``model``, or a `ValueError` naming the supported families."""
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"hf_cagul does not support {type(model).__name__} (model_type={model_type!r}). "
        f"Supported families: {', '.join(supported_families())}. "
        "See docs/families.md to add one."
    )


def get_family(name: str) -> VLMFamily:
    """The family registered under ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown family {name!r}; supported: {', '.join(supported_families())}."
        ) from None

"""Tiny LLaVA 1.5 and LLaVA-NeXT: a CLIP vision tower (patch 8) and a Llama decoder.

LLaVA-NeXT speaks exactly like LLaVA; its anyres tiles are ``image_size`` square: one for a
square image, two side by side or stacked for a wide or tall one.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.processors import TinyLlavaNextProcessor, TinyLlavaProcessor
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import CHAT_CONTENT, TinyTokens

__all__ = ["LLAVA", "LLAVA_NEXT"]

_TOKENS = TinyTokens(pad="<pad>", bos="<s>", eos="</s>", unk="<unk>", image="<image>")

_CHAT_TEMPLATE = "".join(
    [
        "{{ bos_token }}{% set image = '<image>\\n' %}",
        "{% for message in messages %}{{ message['role'] | upper }}: ",
        CHAT_CONTENT,
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}",
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    ]
)


def _llava_settings(parts: ConfigParts) -> tuple[dict[str, Any], int]:
    """The settings LLaVA and LLaVA-NeXT configs share, and the visual tokens per tile."""
    vision = parts.vision
    vision.update(image_size=parts.image_size, patch_size=8, projection_dim=32)
    vision.update(parts.vision_overrides)
    vision_config: Any = CLIPVisionConfig(**vision)
    grid = vision_config.image_size // vision_config.patch_size
    settings: dict[str, Any] = {
        "vision_config": vision_config,
        "text_config": LlamaConfig(**parts.text),
        "image_token_index": parts.image_token_id,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "tie_word_embeddings": parts.text["tie_word_embeddings"],
    }
    return settings, grid * grid


def _llava_config(parts: ConfigParts) -> PretrainedConfig:
    settings, image_seq_length = _llava_settings(parts)
    return LlavaConfig(**settings, image_seq_length=image_seq_length)


def _anyres_pinpoints(side: int) -> list[list[int]]:
    """LLaVA-NeXT's anyres resolutions: one square tile, or two side by side / stacked.

    A square image stays one tile (plus the downscaled base image); a wide or tall one is split
    in two tiles and then unpadded, so its token count depends on its aspect ratio.
    """
    return [[side, side], [side, 2 * side], [2 * side, side]]


def _llava_next_config(parts: ConfigParts) -> PretrainedConfig:
    settings, image_seq_length = _llava_settings(parts)
    return LlavaNextConfig(
        **settings,
        image_grid_pinpoints=_anyres_pinpoints(settings["vision_config"].image_size),
        image_seq_length=image_seq_length,
    )


def _processor_settings(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> dict[str, Any]:
    """The processor settings LLaVA and LLaVA-NeXT share (after checking ``image_size``)."""
    patch_size = config.vision_config.patch_size
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of {patch_size}.")
    return {
        "tokenizer": tokenizer,
        "patch_size": patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # CLIP's class token, dropped by "default"
        "chat_template": template,
    }


def _image_sizes(image_size: int) -> dict[str, Any]:
    """The image processor's resize and crop: CLIP's shortest edge, then a centre square."""
    return {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
    }


def _llava_processor(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> ProcessorMixin:
    settings = _processor_settings(config, tokenizer, image_size, template)
    image_processor = CLIPImageProcessorPil(**_image_sizes(image_size))
    return TinyLlavaProcessor(image_processor=image_processor, **settings)


def _llava_next_processor(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> ProcessorMixin:
    settings = _processor_settings(config, tokenizer, image_size, template)
    image_processor = LlavaNextImageProcessorPil(
        **_image_sizes(image_size), image_grid_pinpoints=config.image_grid_pinpoints
    )
    return TinyLlavaNextProcessor(image_processor=image_processor, **settings)


LLAVA = TinyFamily(
    name="llava",
    placeholder="<image>",
    tokens=_TOKENS,
    chat_template=_CHAT_TEMPLATE,
    build_config=_llava_config,
    build_processor=_llava_processor,
)

LLAVA_NEXT = TinyFamily(
    name="llava_next",
    placeholder="<image>",
    tokens=_TOKENS,
    chat_template=_CHAT_TEMPLATE,
    build_config=_llava_next_config,
    build_processor=_llava_next_processor,
    extra_inputs=frozenset({"image_sizes"}),
)

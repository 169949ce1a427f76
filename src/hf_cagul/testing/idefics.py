"""Tiny Idefics3 and SmolVLM: a SigLIP-style tower (patch 4), pixel shuffle by 2, a Llama decoder.

SmolVLM speaks exactly like Idefics3. Image splitting is off: each image is resized to
``image_size`` square and gives one run of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ImageProcessorPil,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMImageProcessorPil,
)
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.processors import TinyIdefics3Processor, TinySmolVLMProcessor
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import CHAT_CONTENT, TinyTokens

__all__ = ["IDEFICS3", "SMOLVLM"]

_TOKENS = TinyTokens(
    pad="<pad>",
    bos="<s>",
    eos="<end_of_utterance>",
    unk="<unk>",
    image="<image>",
    extra=(
        "<fake_token_around_image>",
        "<global-img>",
        *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
    ),
)

_CHAT_TEMPLATE = "".join(
    [
        "{{ bos_token }}{% set image = '<image>' %}",
        "{% for message in messages %}{{ message['role'] | capitalize }}:",
        "{% if message['content'] is string or message['content'][0]['type'] != 'image' %}",
        " {% endif %}",
        CHAT_CONTENT,
        "<end_of_utterance>\n{% endfor %}",
        "{% if add_generation_prompt %}Assistant:{% endif %}",
    ]
)


def _idefics_config(
    config_class: Callable[..., PretrainedConfig], parts: ConfigParts
) -> PretrainedConfig:
    """An Idefics3-style config: patch 4 and a scale factor of 2, 16 tokens for 32 px."""
    vision = parts.vision
    vision.update(image_size=parts.image_size, patch_size=4)
    vision.update(parts.vision_overrides)
    text = parts.text
    # Idefics3Config and SmolVLMConfig keep a deprecated top-level pad id (default 128002,
    # outside this vocab).
    legacy: dict[str, Any] = {"pad_token_id": text["pad_token_id"]}
    return config_class(
        text_config=LlamaConfig(**text),
        vision_config=vision,
        image_token_id=parts.image_token_id,
        scale_factor=2,
        tie_word_embeddings=text["tie_word_embeddings"],
        **legacy,
    )


def _idefics_processor(
    processor_class: type[ProcessorMixin],
    image_processor_class: type[Any],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    template: str,
) -> ProcessorMixin:
    """An Idefics3-style processor with image splitting off."""
    vision = config.vision_config
    patches = vision.image_size // vision.patch_size
    if vision.image_size % vision.patch_size or patches % config.scale_factor:
        raise ValueError(
            f"image_size {vision.image_size} must be a multiple of patch_size x scale_factor "
            f"({vision.patch_size} x {config.scale_factor})."
        )
    image_processor = image_processor_class(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(patches // config.scale_factor) ** 2,
        chat_template=template,
    )


def _idefics_family(
    name: str,
    config_class: Callable[..., PretrainedConfig],
    processor_class: type[ProcessorMixin],
    image_processor_class: type[Any],
) -> TinyFamily:
    """An Idefics3-style spec: Idefics3 and SmolVLM differ only in their classes."""
    return TinyFamily(
        name=name,
        placeholder="<image>",
        tokens=_TOKENS,
        chat_template=_CHAT_TEMPLATE,
        build_config=partial(_idefics_config, config_class),
        build_processor=partial(_idefics_processor, processor_class, image_processor_class),
        extra_inputs=frozenset({"pixel_attention_mask"}),
    )


IDEFICS3 = _idefics_family(
    "idefics3", Idefics3Config, TinyIdefics3Processor, Idefics3ImageProcessorPil
)
SMOLVLM = _idefics_family("smolvlm", SmolVLMConfig, TinySmolVLMProcessor, SmolVLMImageProcessorPil)

"""Tiny PaliGemma (Gemma decoder) and Gemma3 (Gemma3 decoder), both with a SigLIP tower.

Both give ``(image_size / 8) ** 2`` visual tokens: PaliGemma through patch 8, Gemma3 through
patch 4 and its 2 x 2 average pooling (``mm_tokens_per_image``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3TextConfig,
    GemmaConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.processors import TinyGemma3Processor, TinyPaliGemmaProcessor
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import CHAT_CONTENT, TinyTokens

__all__ = ["GEMMA3", "PALIGEMMA"]


def _siglip_vision_config(parts: ConfigParts, patch_size: int) -> SiglipVisionConfig:
    """The SigLIP tower, after giving the text config Gemma's head width for the tiny size."""
    head_dim = parts.text["hidden_size"] // parts.text["num_attention_heads"]
    parts.text.setdefault("head_dim", head_dim)  # Gemma's default head_dim is 256
    vision = parts.vision
    vision.update(image_size=parts.image_size, patch_size=patch_size)
    vision.update(parts.vision_overrides)
    return SiglipVisionConfig(**vision)


def _square(config: PretrainedConfig) -> dict[str, int]:
    side = config.vision_config.image_size
    return {"height": side, "width": side}


# ---- PaliGemma ---------------------------------------------------------------------------------

_PALIGEMMA_TOKENS = TinyTokens(
    pad="<pad>",
    bos="<bos>",
    eos="<eos>",
    unk="<unk>",
    image="<image>",
    prefix_bos=False,  # PaliGemmaProcessor writes bos itself, after the image tokens
)

# PaliGemma is a prefix LM without roles: the image comes first, then the text.
_PALIGEMMA_CHAT_TEMPLATE = "".join(
    [
        "{% set image = '<image>' %}{% for message in messages %}",
        CHAT_CONTENT,
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}",
    ]
)


def _paligemma_config(parts: ConfigParts) -> PretrainedConfig:
    vision_config = _siglip_vision_config(parts, patch_size=8)
    text = parts.text
    return PaliGemmaConfig(
        vision_config=vision_config,
        text_config=GemmaConfig(**text),
        image_token_index=parts.image_token_id,
        projection_dim=text["hidden_size"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _paligemma_processor(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> ProcessorMixin:
    image_processor = SiglipImageProcessorPil(size=_square(config))
    # PaliGemmaProcessor reads the number of image tokens from its image processor.
    image_processor.image_seq_length = config.text_config.num_image_tokens  # type: ignore[attr-defined]
    return TinyPaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )


PALIGEMMA = TinyFamily(
    name="paligemma",
    placeholder="<image>",
    tokens=_PALIGEMMA_TOKENS,
    chat_template=_PALIGEMMA_CHAT_TEMPLATE,
    build_config=_paligemma_config,
    build_processor=_paligemma_processor,
    extra_inputs=frozenset({"token_type_ids"}),
)


# ---- Gemma3 ------------------------------------------------------------------------------------

_GEMMA3_TOKENS = TinyTokens(
    pad="<pad>",
    bos="<bos>",
    eos="<end_of_turn>",  # as in Gemma3's generation config: ends an assistant turn
    unk="<unk>",
    image="<image_soft_token>",
    extra=("<start_of_turn>", "<start_of_image>", "<end_of_image>"),
    words=("model",),  # the assistant's role name in Gemma's chat format
    # Gemma3Processor reads these tokenizer attributes.
    named=(
        ("boi_token", "<start_of_image>"),
        ("eoi_token", "<end_of_image>"),
        ("image_token", "<image_soft_token>"),
    ),
)

_GEMMA3_CHAT_TEMPLATE = "".join(
    [
        "{{ bos_token }}{% set image = '<start_of_image>' %}",
        "{% for message in messages %}<start_of_turn>",
        "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n",
        CHAT_CONTENT,
        "<end_of_turn>\n{% endfor %}",
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ]
)


def _gemma3_config(parts: ConfigParts) -> PretrainedConfig:
    vision_config = _siglip_vision_config(parts, patch_size=4)
    text: dict[str, Any] = parts.text
    text.setdefault("query_pre_attn_scalar", text["head_dim"])
    # Alternate sliding-window and full layers, with a window shorter than the prompts, so
    # scores are checked under both masks.
    text.setdefault("sliding_window", 24)
    text.setdefault(
        "layer_types",
        [
            "full_attention" if index % 2 else "sliding_attention"
            for index in range(text["num_hidden_layers"])
        ],
    )
    tokens_per_side = int(parts.vision["image_size"]) // 8
    return Gemma3Config(
        vision_config=vision_config,
        text_config=Gemma3TextConfig(**text),
        mm_tokens_per_image=tokens_per_side * tokens_per_side,
        image_token_index=parts.image_token_id,
        boi_token_index=parts.token_id("<start_of_image>"),
        eoi_token_index=parts.token_id("<end_of_image>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _gemma3_processor(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> ProcessorMixin:
    return TinyGemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size=_square(config), do_pan_and_scan=False),
        tokenizer=tokenizer,
        image_seq_length=config.mm_tokens_per_image,
        chat_template=template,
    )


def _draw_image_projection(model: PreTrainedModel) -> None:
    """Give Gemma3's zero-initialised image projection random weights (else every visual token
    is 0 and the image cannot change the output)."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(std=weight.shape[0] ** -0.5)


GEMMA3 = TinyFamily(
    name="gemma3",
    placeholder="<start_of_image>",
    tokens=_GEMMA3_TOKENS,
    chat_template=_GEMMA3_CHAT_TEMPLATE,
    build_config=_gemma3_config,
    build_processor=_gemma3_processor,
    extra_inputs=frozenset({"token_type_ids"}),
    make_image_visible=_draw_image_projection,
)

"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL: patch 4 with a 2 x 2 merge, and M-RoPE.

The three speak alike (``<|vision_start|><|image_pad|><|vision_end|>``, the ``<|image_pad|>``
expanded to the image's tokens); Qwen2.5-VL's vision merger works in 2 x 2 windows, and
Qwen3-VL's first two vision layers also feed decoder layers 0 and 1 (deepstack).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLVisionConfig,
)
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.processors import (
    TinyQwen2_5_VLProcessor,
    TinyQwen2VLProcessor,
    TinyQwen3VLProcessor,
)
from hf_cagul.testing.spec import ConfigBuilder, ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import CHAT_CONTENT, TinyTokens

__all__ = ["QWEN2_5_VL", "QWEN2_VL", "QWEN3_VL"]

_TOKENS = TinyTokens(
    pad="<|endoftext|>",
    bos=None,
    eos="<|im_end|>",
    unk="<unk>",
    image="<|image_pad|>",
    extra=("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
)

_CHAT_TEMPLATE = "".join(
    [
        "{% set image = '<|vision_start|><|image_pad|><|vision_end|>' %}",
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n",
        CHAT_CONTENT,
        "<|im_end|>\n{% endfor %}",
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ]
)

_PATCHES = {"patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (temporal, height, width) split of the rotary half-dimension."""
    half = head_dim // 2
    spatial = half * 3 // 8
    return [half - 2 * spatial, spatial, spatial]


def _qwen_settings(parts: ConfigParts) -> dict[str, Any]:
    """The settings Qwen2-VL and Qwen2.5-VL configs share: M-RoPE and the vision token ids."""
    text = parts.text
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text.setdefault(
        "rope_parameters",
        {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": _mrope_section(head_dim),
        },
    )
    return {
        "text_config": text,
        "image_token_id": parts.image_token_id,
        "video_token_id": parts.token_id("<|video_pad|>"),
        "vision_start_token_id": parts.token_id("<|vision_start|>"),
        "vision_end_token_id": parts.token_id("<|vision_end|>"),
        "tie_word_embeddings": text["tie_word_embeddings"],
    }


def _qwen2_vl_config(parts: ConfigParts) -> PretrainedConfig:
    settings = _qwen_settings(parts)
    vision: dict[str, Any] = {
        "depth": parts.vision["num_hidden_layers"],
        "embed_dim": parts.vision["hidden_size"],
        "num_heads": parts.vision["num_attention_heads"],
        "mlp_ratio": 2,
        "hidden_size": parts.text["hidden_size"],  # the merger's output: the text width
        **_PATCHES,
    }
    vision.update(parts.vision_overrides)
    return Qwen2VLConfig(**settings, vision_config=vision)


def _qwen2_5_vl_config(parts: ConfigParts) -> PretrainedConfig:
    """Qwen2.5-VL: windowed attention whose windows permute the merger's rows.

    A window of 2 x 2 merged tokens (``window_size`` 16 px with patch 4 and merge 2) makes the
    merger output come out in window order, not in row-major token order, already at 32 px: the
    case CAGUL's by-position indexing exists for. The last block attends fully.
    """
    settings = _qwen_settings(parts)
    vision: dict[str, Any] = {
        "depth": parts.vision["num_hidden_layers"],
        "hidden_size": parts.vision["hidden_size"],
        "intermediate_size": parts.vision["intermediate_size"],
        "num_heads": parts.vision["num_attention_heads"],
        "out_hidden_size": parts.text["hidden_size"],  # the merger's output: the text width
        "window_size": 2 * _PATCHES["patch_size"] * _PATCHES["spatial_merge_size"],
        **_PATCHES,
    }
    vision.update(parts.vision_overrides)
    vision.setdefault("fullatt_block_indexes", [vision["depth"] - 1])
    return Qwen2_5_VLConfig(**settings, vision_config=vision)


def _qwen3_vl_config(parts: ConfigParts) -> PretrainedConfig:
    """Qwen3-VL: Qwen2-VL's tiny geometry, interleaved M-RoPE and deepstack into layers 0, 1."""
    text = parts.text
    head_dim = text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    text.setdefault(
        "rope_parameters",
        {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": _mrope_section(head_dim),
            "mrope_interleaved": True,
        },
    )
    vision: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],  # the mergers' output: the text width
        **_PATCHES,
        "num_position_embeddings": 64,  # an 8 x 8 patch grid, interpolated for other sizes
    }
    vision.update(parts.vision_overrides)
    for alias, key in Qwen3VLVisionConfig.attribute_map.items():  # num_hidden_layers -> depth...
        if alias in vision:
            vision[key] = vision.pop(alias)
    depth = vision["depth"]
    # Features of the first vision layers enter the first decoder layers (real models: 3 of each).
    vision.setdefault("deepstack_visual_indexes", [index for index in (0, 1) if index < depth])
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=parts.image_token_id,
        video_token_id=parts.token_id("<|video_pad|>"),
        vision_start_token_id=parts.token_id("<|vision_start|>"),
        vision_end_token_id=parts.token_id("<|vision_end|>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _qwen_processor(
    processor_class: type[ProcessorMixin],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    template: str,
) -> ProcessorMixin:
    """A Qwen*-VL processor whose image processor is fixed to ``image_size`` square images."""
    vision = config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not a multiple of {factor}.")
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=image_size * image_size,
        max_pixels=image_size * image_size,
    )
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )


def _qwen_family(
    name: str, build_config: ConfigBuilder, processor_class: type[ProcessorMixin]
) -> TinyFamily:
    """A Qwen*-VL spec: the three differ only in their config and processor class."""
    return TinyFamily(
        name=name,
        placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        tokens=_TOKENS,
        chat_template=_CHAT_TEMPLATE,
        build_config=build_config,
        build_processor=partial(_qwen_processor, processor_class),
        extra_inputs=frozenset({"image_grid_thw", "mm_token_type_ids"}),
    )


QWEN2_VL = _qwen_family("qwen2_vl", _qwen2_vl_config, TinyQwen2VLProcessor)
QWEN2_5_VL = _qwen_family("qwen2_5_vl", _qwen2_5_vl_config, TinyQwen2_5_VLProcessor)
QWEN3_VL = _qwen_family("qwen3_vl", _qwen3_vl_config, TinyQwen3VLProcessor)

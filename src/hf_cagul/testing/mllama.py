"""Tiny Mllama (Llama 3.2 Vision): images reach the decoder through cross-attention layers.

``<|image|>`` stays one token; the image's 17 visual states (16 patches and a class token, one
tile) reach the language model as ``cross_attention_states``.
"""

from __future__ import annotations

import torch
from transformers import (
    MllamaConfig,
    MllamaImageProcessorPil,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.processors import TinyMllamaProcessor
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import CHAT_CONTENT, TinyTokens

__all__ = ["MLLAMA"]

_TOKENS = TinyTokens(
    pad="<|finetune_right_pad_id|>",
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    unk="<unk>",
    image="<|image|>",
    extra=("<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>"),
)

_CHAT_TEMPLATE = "".join(
    [
        "{{ bos_token }}{% set image = '<|image|>' %}",
        "{% for message in messages %}",
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n",
        CHAT_CONTENT,
        "<|eot_id|>{% endfor %}",
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n",
        "{% endif %}",
    ]
)


def _mllama_config(parts: ConfigParts) -> PretrainedConfig:
    """Mllama: a cross-attention layer every other decoder layer from layer 1; one tile per image.

    Each image is one 32 px tile of 16 patches plus the class token: 17 visual states. Layer 0
    must self-attend: transformers reads the text length off the cache of layer 0.
    """
    text = parts.text
    text.setdefault("cross_attention_layers", list(range(1, text["num_hidden_layers"], 2)))
    vision = {
        "hidden_size": parts.vision["hidden_size"],
        "intermediate_size": parts.vision["intermediate_size"],
        "num_hidden_layers": parts.vision["num_hidden_layers"],
        "attention_heads": parts.vision["num_attention_heads"],
        "num_global_layers": 1,
        "image_size": parts.image_size,
        "patch_size": 8,
        "max_num_tiles": 1,
        "supported_aspect_ratios": [[1, 1]],
        "intermediate_layers_indices": [0],
    }
    vision.update(parts.vision_overrides)
    # The projector reads the last layer concatenated with the intermediate ones.
    vision.setdefault(
        "vision_output_dim",
        vision["hidden_size"] * (1 + len(vision["intermediate_layers_indices"])),
    )
    return MllamaConfig(
        text_config=text, vision_config=vision, image_token_index=parts.image_token_id
    )


def _mllama_processor(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int, template: str
) -> ProcessorMixin:
    vision = config.vision_config
    if vision.image_size % vision.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of {vision.patch_size}.")
    image_processor = MllamaImageProcessorPil(
        size={"height": vision.image_size, "width": vision.image_size},
        max_image_tiles=vision.max_num_tiles,
    )
    return TinyMllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )


def _open_cross_attention_gates(model: PreTrainedModel) -> None:
    """Give Mllama's tanh gates a value: they start at 0, where the image has no effect at all."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)


MLLAMA = TinyFamily(
    name="mllama",
    placeholder="<|image|>",
    tokens=_TOKENS,
    chat_template=_CHAT_TEMPLATE,
    build_config=_mllama_config,
    build_processor=_mllama_processor,
    extra_inputs=frozenset({"aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"}),
    make_image_visible=_open_cross_attention_gates,
)

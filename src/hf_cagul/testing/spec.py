"""`TinyFamily`: everything that makes one family's tiny VLM, in one object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.tokenizer import TinyTokens

__all__ = ["ConfigParts", "TinyFamily"]


@dataclass
class ConfigParts:
    """What `tiny_vlm` hands a family's config builder.

    Attributes:
        text: The text config's settings: the tiny defaults (hidden size 64, 2 layers, 4 heads,
            2 key/value heads, the tokenizer's vocabulary and special-token ids) updated with
            the caller's overrides. A builder may complete it (``setdefault``) before use.
        vision: The tiny vision defaults in CLIP's keys (``hidden_size`` 32,
            ``intermediate_size`` 64, ``num_hidden_layers`` 2, ``num_attention_heads`` 2), for
            the builder to translate into its vision config's keys.
        vision_overrides: The caller's updates to the vision config, in the family's keys;
            they win over every default.
        image_size: Side of the square images the vision encoder sees.
        token_id: The id of one token of the tiny tokenizer (raises for a string that is not
            one token).
        image_token_id: The id of the family's image token (`TinyTokens.image`).
    """

    text: dict[str, Any]
    vision: dict[str, Any]
    vision_overrides: dict[str, Any]
    image_size: int
    token_id: Callable[[str], int]
    image_token_id: int


ConfigBuilder = Callable[[ConfigParts], PretrainedConfig]
"""Builds a family's model config from the tiny defaults and the caller's overrides."""

ProcessorBuilder = Callable[[PretrainedConfig, PreTrainedTokenizerFast, int, str], ProcessorMixin]
"""``(config, tokenizer, image_size, chat_template) -> processor`` for a family's model."""


def leave_weights_as_drawn(model: PreTrainedModel) -> None:
    """The default `TinyFamily.make_image_visible`: a fresh model already sees its images."""


@dataclass(frozen=True)
class TinyFamily:
    """One family's tiny VLM: tokens, chat template, config, processor and weight fixes.

    `tiny_vlm` builds any family from its spec alone: a new family is a new `TinyFamily` (add
    it to the registry to list it in `TINY_FAMILIES`, or pass it to `tiny_vlm` directly).

    Attributes:
        name: The family's key, as in `TINY_FAMILIES` (and `hf_cagul.families`).
        placeholder: What a prompt holds where one image goes (`TINY_IMAGE_PLACEHOLDER`).
        tokens: The tokenizer's special tokens.
        chat_template: The tokenizer's and processor's chat template, in the spirit of the
            family's real one; it renders ``{"type": "image"}`` items as ``placeholder`` and
            ends an assistant turn with the eos token, so models fine-tuned on rendered chats
            learn to stop.
        build_config: Builds the model config (see `ConfigParts`).
        build_processor: Builds the processor, a ``Tiny*Processor`` of
            `hf_cagul.testing.processors` around the family's PIL image processor; it raises a
            `ValueError` for an ``image_size`` the patches do not divide.
        extra_inputs: What the processor returns for a batch with images beside
            ``input_ids``, ``attention_mask`` and ``pixel_values`` (e.g. ``image_grid_thw``).
        make_image_visible: Re-initialises, in place, weights a fresh random model leaves at a
            value where images have no effect (zero projections, closed gates). It runs under
            the builder's seeded RNG, right after the model is drawn.
    """

    name: str
    placeholder: str
    tokens: TinyTokens
    chat_template: str
    build_config: ConfigBuilder
    build_processor: ProcessorBuilder
    extra_inputs: frozenset[str] = frozenset()
    make_image_visible: Callable[[PreTrainedModel], None] = leave_weights_as_drawn

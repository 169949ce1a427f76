"""`tiny_vlm` and `tiny_tokenizer`: build any `TinyFamily`'s model, processor and tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel, PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

from hf_cagul.testing.registry import tiny_family
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import build_tokenizer

__all__ = ["TINY_IMAGE_SIZE", "tiny_tokenizer", "tiny_vlm"]

TINY_IMAGE_SIZE = 32
"""Default side, in pixels, of the square images the tiny models see (inputs are resized)."""


def tiny_tokenizer(
    family: str | TinyFamily, extra_words: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """The in-memory word-level tokenizer `tiny_vlm` pairs with ``family``.

    The vocabulary is the family's special tokens (ids 0, 1, ...), then `TINY_WORDS`, then
    ``extra_words`` (lower-cased, duplicates dropped). Text is lower-cased and split into words
    (inner apostrophes kept, as in ``don't``), single punctuation characters and single digits;
    anything else becomes the unknown token. LLaVA(-NeXT), Idefics3, SmolVLM and Gemma3 prepend
    their bos token; Qwen*-VL add none; PaliGemma's processor writes bos itself, after the image.
    Decoding joins tokens with spaces.

    Args:
        family: One of `TINY_FAMILIES`, or a `TinyFamily`.
        extra_words: More words to give tokens of their own.

    Returns:
        A `PreTrainedTokenizerFast` with pad, eos, unk (and bos) set, padding on the right.

    Raises:
        ValueError: For an unknown family, or an extra word that is not one word.
    """
    spec = tiny_family(family)
    return build_tokenizer(spec.tokens, spec.chat_template, extra_words)


def _config_parts(
    spec: TinyFamily,
    tokenizer: PreTrainedTokenizerFast,
    text_overrides: dict[str, Any],
    vision_overrides: dict[str, Any],
    image_size: int,
) -> ConfigParts:
    """The tiny defaults, updated with the caller's text overrides, for ``spec``'s builder."""

    def token_id(token: str) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(index, int):
            raise TypeError(f"{token!r} is not one token of the tiny tokenizer.")
        return index

    tokens = spec.tokens
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": token_id(tokens.pad),
        "bos_token_id": None if tokens.bos is None else token_id(tokens.bos),
        "eos_token_id": token_id(tokens.eos),
        "tie_word_embeddings": False,
    }
    text.update(text_overrides)
    if text["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"vocab_size={text['vocab_size']} does not cover the tokenizer's {len(tokenizer)} "
            "tokens."
        )
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    return ConfigParts(
        text=text,
        vision=vision,
        vision_overrides=vision_overrides,
        image_size=image_size,
        token_id=token_id,
        image_token_id=token_id(tokens.image),
    )


def tiny_vlm(
    family: str | TinyFamily,
    seed: int = 0,
    *,
    vision_config: Mapping[str, Any] | None = None,
    image_size: int = TINY_IMAGE_SIZE,
    extra_words: Sequence[str] = (),
    attn_implementation: str | None = None,
    **overrides: Any,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a tiny, randomly initialised VLM of ``family`` and a processor that fits it.

    Everything is built in-process: no network, no files. The same ``family``, ``seed`` and
    arguments give identical weights (the global torch RNG is seeded inside a fork, so the
    caller's RNG state is left as it was).

    Sizes by default: 32 px images and 16 visual tokens per image (LLaVA-NeXT: 36; Mllama: 17
    rows of ``cross_attention_states``, the class token included); vision encoder with 2 layers,
    width 32; text decoder (Llama for LLaVA(-NeXT), Idefics3 and SmolVLM, Qwen2 for Qwen2-VL and
    Qwen2.5-VL, Gemma for PaliGemma, Gemma3 for Gemma3, alternating sliding-window (24 tokens)
    and full layers, Qwen3 for Qwen3-VL, whose vision layers 0 and 1 also feed decoder layers 0
    and 1: deepstack, and Mllama's, with a cross-attention layer every other layer from layer 1)
    with 2 layers, hidden size 64, 4 attention heads, 2 key/value heads, float32. Gemma3's image
    projection, zero in a fresh model, is drawn at random, and Mllama's cross-attention gates,
    zero too, are opened, so the image reaches the language model.

    The processor is the family's transformers processor class (a ``Tiny*Processor`` subclass:
    Qwen*-VL and SmolVLM without their torchvision-only video part, PaliGemma without its
    location tokens; see each class) with the family's PIL image processor, so it is called
    like any HF processor::

        inputs = processor(images=[img, None], text=[f"{TINY_IMAGE_PLACEHOLDER[family]} what "
                           "is this?", "who is he?"], return_tensors="pt", padding=True)

    ``images`` is either transformers' flat list (images in the order of the placeholders in
    the batch) or one entry per sample: an image, a list of images, or ``None`` for a text-only
    sample. Each placeholder (`TINY_IMAGE_PLACEHOLDER`) becomes the image's visual tokens.
    Idefics3 and SmolVLM have image splitting off and Gemma3 pan-and-scan: each image is resized
    to ``image_size`` square and gives one run of tokens. Qwen*-VL keep the aspect ratio, so
    only square images give exactly 16 tokens, and their outputs hold ``image_grid_thw`` and
    ``mm_token_type_ids``. LLaVA-NeXT's token count depends on the aspect ratio (see the module
    docstring). Padding is on the right; set ``processor.tokenizer.padding_side = "left"`` for
    batched generation.

    Args:
        family: One of `TINY_FAMILIES`: ``"llava"``, ``"llava_next"``, ``"qwen2_vl"``,
            ``"qwen2_5_vl"``, ``"idefics3"``, ``"smolvlm"``, ``"paligemma"``, ``"gemma3"``,
            ``"qwen3_vl"`` or ``"mllama"``; or a `TinyFamily`, for a family the registry does
            not list.
        seed: Seed for the random weights.
        vision_config: Updates to the vision config, in the family's vision-config keys
            (CLIP for LLaVA(-NeXT), ``Qwen2VLVisionConfig`` for Qwen2-VL: ``depth``,
            ``embed_dim``, ``num_heads``...; ``Qwen2_5_VLVisionConfig``: ``depth``,
            ``hidden_size``, ``window_size``...; ``Qwen3VLVisionConfig``: ``depth``,
            ``hidden_size``, ``deepstack_visual_indexes``...; ``Idefics3VisionConfig``,
            SmolVLM's, SigLIP for PaliGemma and Gemma3, ``MllamaVisionConfig``), e.g.
            ``{"num_hidden_layers": 1}``. An
            ``image_size`` key here counts as the ``image_size`` argument.
        image_size: Side of the square images the vision encoder sees. Visual tokens per image
            are ``(image_size / 8) ** 2`` by default in every family (LLaVA, PaliGemma: patch 8;
            Qwen*-VL: patch 4, 2 x 2 merge; Idefics3, SmolVLM: patch 4, scale factor 2; Gemma3:
            patch 4, 2 x 2 pooling), LLaVA-NeXT adding its anyres tiles.
        extra_words: More words for the tokenizer's vocabulary (see `tiny_tokenizer`).
        attn_implementation: ``"eager"``, ``"sdpa"``...; transformers' default (sdpa) if None.
            The weights do not depend on it, so an eager twin built with the same seed is
            identical.
        **overrides: Updates to the text config, e.g. ``num_hidden_layers=4``,
            ``hidden_size=128``. ``vocab_size`` may grow but not shrink below the tokenizer.

    Returns:
        ``(model, processor)``: the model in eval mode, and its processor, whose ``tokenizer``
        has ``pad_token_id``, ``eos_token_id``, ``decode``/``batch_decode`` and a chat template
        (``processor.apply_chat_template`` renders ``{"type": "image"}`` to the placeholder).

    Raises:
        ValueError: For an unknown family, an image size the patches do not divide, or a
            vocabulary smaller than the tokenizer.
    """
    spec = tiny_family(family)
    vision_overrides = dict(vision_config or {})
    image_size = int(vision_overrides.pop("image_size", image_size))
    tokenizer = tiny_tokenizer(spec, extra_words)
    parts = _config_parts(spec, tokenizer, dict(overrides), vision_overrides, image_size)
    config = spec.build_config(parts)
    processor = spec.build_processor(config, tokenizer, image_size, spec.chat_template)

    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, **kwargs)
        spec.make_image_visible(model)
    model.eval()

    generation_config = model.generation_config
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor

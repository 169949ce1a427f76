"""Tiny, randomly initialised vision-language models for tests, examples and benchmarks.

`tiny_vlm` builds a real `transformers` VLM (LLaVA 1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
Idefics3, SmolVLM, PaliGemma, Gemma3, Qwen3-VL or Mllama; see `TINY_FAMILIES`) from a tiny
config, fully offline and in-process, together with a matching processor: a real
`transformers` processor class around a word-level tokenizer built in memory and the family's
PIL image processor (torchvision is not needed).

Defaults (every family): 32 x 32 px images, 16 visual tokens per image (LLaVA-NeXT: 36,
Mllama: 17, see below), a 2-layer vision encoder, a 2-layer text decoder with hidden size 64
(4 query heads, 2 key/value heads) and a vocabulary of a few hundred lower-cased words
(`TINY_WORDS`).

Prompt convention: write the family's image placeholder (`TINY_IMAGE_PLACEHOLDER`) in the
text once per image, where the image goes, and pass the images in the same order. The
processor expands each placeholder to the image's visual tokens:

- ``llava``: ``<image>`` becomes 16 ``<image>`` tokens.
- ``qwen2_vl``: ``<|vision_start|><|image_pad|><|vision_end|>``; the ``<|image_pad|>`` becomes
  16 ``<|image_pad|>`` tokens (for a square image; Qwen2-VL keeps the aspect ratio).
- ``qwen3_vl``: as ``qwen2_vl``; the first two vision layers also feed decoder layers 0 and 1
  (deepstack).
- ``idefics3``: ``<image>`` becomes ``<fake_token_around_image><global-img>``, 16 ``<image>``
  tokens, ``<fake_token_around_image>`` (image splitting is off).
- ``llava_next``: ``<image>`` becomes one run of ``<image>`` tokens: 16 for the downscaled base
  image plus the anyres tiles (``image_size`` square; two side by side or stacked for a wide or
  tall image), unpadded, with one newline token per tile row: 36 for a square image.
- ``qwen2_5_vl``: as ``qwen2_vl``; its vision merger works in 2 x 2 windows.
- ``smolvlm``: as ``idefics3``.
- ``paligemma``: ``<image>`` (first in the text) becomes 16 ``<image>`` tokens followed by bos;
  the prompt is a bidirectional prefix (``token_type_ids`` 0).
- ``gemma3``: ``<start_of_image>`` becomes ``<start_of_image>``, 16 ``<image_soft_token>``
  tokens, ``<end_of_image>`` (pan-and-scan is off; ``token_type_ids`` mark the image tokens).
- ``mllama``: ``<|image|>`` stays one token; the image's 17 visual states (16 patches and a
  class token, one tile) reach the language model as ``cross_attention_states``.

Keep two images of one prompt apart (some text between them) so each image is one run of
image tokens.

``processor.apply_chat_template`` renders ``{"type": "image"}`` content items to the
placeholder.

Each family is one `TinyFamily` spec (its tokens, chat template, config and processor builders,
the inputs its processor adds, and the weights a random model must re-draw), in one module per
model lineage (``llava``, ``qwen``, ``idefics``, ``gemma``, ``mllama``), listed once in
``registry``. A new family is a new `TinyFamily`: pass it to `tiny_vlm` as it is, or list it in
the registry to build it by name.
"""

from hf_cagul.testing.builder import TINY_IMAGE_SIZE, tiny_tokenizer, tiny_vlm
from hf_cagul.testing.processors import (
    TinyGemma3Processor,
    TinyIdefics3Processor,
    TinyLlavaNextProcessor,
    TinyLlavaProcessor,
    TinyMllamaProcessor,
    TinyPaliGemmaProcessor,
    TinyQwen2_5_VLProcessor,
    TinyQwen2VLProcessor,
    TinyQwen3VLProcessor,
    TinySmolVLMProcessor,
)
from hf_cagul.testing.registry import (
    TINY_FAMILIES,
    TINY_FAMILY_SPECS,
    TINY_IMAGE_PLACEHOLDER,
    tiny_family,
)
from hf_cagul.testing.spec import ConfigParts, TinyFamily
from hf_cagul.testing.tokenizer import TinyTokens
from hf_cagul.testing.vocabulary import TINY_WORDS

__all__ = [
    "TINY_FAMILIES",
    "TINY_FAMILY_SPECS",
    "TINY_IMAGE_PLACEHOLDER",
    "TINY_IMAGE_SIZE",
    "TINY_WORDS",
    "ConfigParts",
    "TinyFamily",
    "TinyGemma3Processor",
    "TinyIdefics3Processor",
    "TinyLlavaNextProcessor",
    "TinyLlavaProcessor",
    "TinyMllamaProcessor",
    "TinyPaliGemmaProcessor",
    "TinyQwen2VLProcessor",
    "TinyQwen2_5_VLProcessor",
    "TinyQwen3VLProcessor",
    "TinySmolVLMProcessor",
    "TinyTokens",
    "tiny_family",
    "tiny_tokenizer",
    "tiny_vlm",
]

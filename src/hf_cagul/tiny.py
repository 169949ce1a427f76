"""The tiny offline VLM builders under their first name: everything here is `hf_cagul.testing`'s.

Kept so that existing imports (``from hf_cagul.tiny import tiny_vlm``) and saved tiny processors,
whose ``processor_config.json`` names a ``Tiny*Processor`` class looked up here by
``hf_cagul.cli.load_processor``, keep working. New code imports `hf_cagul.testing`.
"""

from hf_cagul.testing import (
    TINY_FAMILIES,
    TINY_IMAGE_PLACEHOLDER,
    TINY_IMAGE_SIZE,
    TINY_WORDS,
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
    tiny_tokenizer,
    tiny_vlm,
)

__all__ = [
    "TINY_FAMILIES",
    "TINY_IMAGE_PLACEHOLDER",
    "TINY_IMAGE_SIZE",
    "TINY_WORDS",
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
    "tiny_tokenizer",
    "tiny_vlm",
]

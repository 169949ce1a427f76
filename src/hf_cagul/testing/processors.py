"""The tiny VLMs' processors: each family's transformers processor class, fitted to the tiny
vocabulary and to images only (no torchvision), and taking images per sample.

Saved processors name these classes in ``processor_config.json``; load one with the class's
``from_pretrained`` (or ``hf_cagul.cli.load_processor``, which looks the class up by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    Gemma3Processor,
    Idefics3Processor,
    LlavaNextProcessor,
    LlavaProcessor,
    MllamaProcessor,
    PaliGemmaProcessor,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
    SmolVLMProcessor,
)
from transformers.processing_utils import ProcessorMixin

__all__ = [
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
]


def _flatten_images(images: Any, text: Any, placeholder: str) -> Any:
    """Turn a per-sample image list (entries: image, list of images, or None) into a flat list.

    A list whose entries are all images is passed through unchanged (transformers' own
    convention: images in placeholder order across the batch). A list holding None or lists is
    read as one entry per sample; each sample's number of images is checked against its
    placeholders, and a batch without any image gives ``None``.
    """
    if not isinstance(images, (list, tuple)):
        return images
    if not any(entry is None or isinstance(entry, (list, tuple)) for entry in images):
        return images
    per_sample = [
        [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]
        for entry in images
    ]
    if isinstance(text, str):
        text = [text]
    if text is not None:
        if len(text) != len(per_sample):
            raise ValueError(
                f"Got {len(per_sample)} per-sample image entries for {len(text)} prompts."
            )
        for index, (sample, sample_images) in enumerate(zip(text, per_sample, strict=True)):
            if sample.count(placeholder) != len(sample_images):
                raise ValueError(
                    f"Sample {index} has {sample.count(placeholder)} {placeholder} placeholders "
                    f"but {len(sample_images)} images."
                )
    flat = [image for sample_images in per_sample for image in sample_images]
    return flat or None


def _nest_images(flat: Any, text: Any, placeholder: str) -> Any:
    """Split a flat image list into one list per sample, by the samples' placeholder counts."""
    if not isinstance(flat, (list, tuple)) or text is None:
        return flat
    texts = [text] if isinstance(text, str) else list(text)
    counts = [sample.count(placeholder) for sample in texts]
    if sum(counts) != len(flat):
        return flat  # let the processor report the mismatch in its own words
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return [list(flat[start : start + count]) for start, count in zip(starts, counts, strict=True)]


class _PerSampleImagesMixin:
    """Lets ``images`` be given per sample, with ``None`` (or ``[]``) for text-only samples.

    Processors that read images as one list per sample (``nested_images``: SmolVLM, Gemma3)
    get them so; the others get transformers' flat list.
    """

    image_token: str
    nested_images: bool = False

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        images = _flatten_images(images, text, self.image_token)
        if self.nested_images:
            images = _nest_images(images, text, self.image_token)
        return super().__call__(images=images, text=text, **kwargs)  # type: ignore[misc]


class _TokenizerInitMixin(_PerSampleImagesMixin):
    """A processor built from its image processor and tokenizer alone, with the special tokens
    of `special_tokens` (for a tiny vocabulary, and without the parts the original's
    ``__init__`` adds: a video processor, extra tokens).
    """

    special_tokens: ClassVar[Mapping[str, str]] = {}
    """``name -> token``: each sets ``<name>_token`` and ``<name>_token_id``."""
    image_processor_settings: ClassVar[tuple[str, ...]] = ()
    """Attributes of the image processor the processor copies (as the original does)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        for setting in self.image_processor_settings:
            setattr(self, setting, getattr(image_processor, setting))
        for name, token in self.special_tokens.items():
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))
        ProcessorMixin.__init__(
            self,  # type: ignore[arg-type]
            image_processor,
            tokenizer,
            chat_template=chat_template,
        )


class _ImagesOnlyQwenMixin(_TokenizerInitMixin):
    """Qwen*-VL processor without its video processor (which needs torchvision).

    transformers' classes insist on a video processor. This mixin drops it and keeps everything
    else: each ``<|image_pad|>`` becomes ``prod(image_grid_thw) // merge_size**2`` image tokens,
    and ``mm_token_type_ids`` (which the model needs with ``image_grid_thw``) is returned.
    """

    special_tokens: ClassVar[Mapping[str, str]] = {
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
    }


class TinyLlavaProcessor(_PerSampleImagesMixin, LlavaProcessor):
    """`LlavaProcessor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyLlavaNextProcessor(_PerSampleImagesMixin, LlavaNextProcessor):
    """`LlavaNextProcessor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyQwen2VLProcessor(_ImagesOnlyQwenMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only: no video processor, so no torchvision needed.

    Each ``<|image_pad|>`` becomes ``prod(image_grid_thw) // merge_size**2`` image tokens, and
    ``mm_token_type_ids`` (which the model needs with ``image_grid_thw``) is returned. It also
    takes per-sample image lists.
    """


class TinyQwen2_5_VLProcessor(_ImagesOnlyQwenMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only, as `TinyQwen2VLProcessor` (no torchvision)."""


class TinyQwen3VLProcessor(_ImagesOnlyQwenMixin, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (no torchvision), as `TinyQwen2VLProcessor`."""

    special_tokens: ClassVar[Mapping[str, str]] = {
        **_ImagesOnlyQwenMixin.special_tokens,
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    }


class TinyIdefics3Processor(_PerSampleImagesMixin, Idefics3Processor):
    """`Idefics3Processor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinySmolVLMProcessor(_PerSampleImagesMixin, SmolVLMProcessor):
    """`SmolVLMProcessor` for images only: no video processor, so neither torchvision nor
    ``num2words`` (which only its video prompts need) is required. Also takes per-sample image
    lists."""

    nested_images = True

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_len: int = 169,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.fake_image_token = "<fake_token_around_image>"
        self.image_token = "<image>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = "<end_of_utterance>"
        self.global_image_token = "<global-img>"
        self.image_seq_len = image_seq_len
        self.video_token = "<video>"
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        """`ProcessorMixin.apply_chat_template` (SmolVLM's own reads video settings)."""
        return ProcessorMixin.apply_chat_template(self, conversation, *args, **kwargs)


class TinyPaliGemmaProcessor(_TokenizerInitMixin, PaliGemmaProcessor):
    """`PaliGemmaProcessor` for the tiny vocabulary.

    Four differences from transformers' class, none of which changes what the model sees for
    an image-first prompt: the 1,152 location and segmentation tokens (``<loc0000>``...) are not
    added to the tiny vocabulary; a sample without ``<image>`` gets its bos at the start (the
    original inserts it after the 6th character) and a text-only batch is accepted (the
    original refuses it, though the model takes it); and the backward-compatible ``labels`` (all
    -100 without a ``suffix``) are returned only when a ``suffix`` is given, so the outputs can
    go to ``generate`` as they are. Also takes per-sample image lists.
    """

    special_tokens: ClassVar[Mapping[str, str]] = {"image": "<image>"}
    image_processor_settings = ("image_seq_length",)

    def __call__(
        self, images: Any = None, text: Any = None, suffix: Any = None, **kwargs: Any
    ) -> Any:
        """`PaliGemmaProcessor.__call__` (see the class docstring for the differences)."""
        outputs = super().__call__(images=images, text=text, suffix=suffix, **kwargs)
        if suffix is None:
            outputs.pop("labels", None)
        return outputs

    def validate_inputs(  # type: ignore[override]
        self, images: Any = None, text: Any = None, **kwargs: Any
    ) -> None:
        """As the original, but text-only batches are allowed (the model takes them)."""
        ProcessorMixin.validate_inputs(self, images=images, text=text, **kwargs)

    def prepare_inputs_layout(  # type: ignore[override]
        self, images: Any = None, text: Any = None, **kwargs: Any
    ) -> Any:
        """Place bos after the last image, or at the start of a sample without one."""
        images, laid_out, *rest = super().prepare_inputs_layout(images=images, text=text, **kwargs)
        if laid_out is not None and text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            bos = self.tokenizer.bos_token
            laid_out = [
                sample if self.image_token in original else f"{bos}{original}\n"
                for sample, original in zip(laid_out, texts, strict=True)
            ]
        return (images, laid_out, *rest)


class TinyGemma3Processor(_PerSampleImagesMixin, Gemma3Processor):
    """`Gemma3Processor` that also takes per-sample image lists (see `tiny_vlm`)."""

    nested_images = True


class TinyMllamaProcessor(MllamaProcessor):
    """`MllamaProcessor` that also takes a flat image list, and writes the bos token once.

    Mllama wants images nested per sample; this one also takes transformers' flat list (images
    in placeholder order) and per-sample entries with ``None`` for text-only samples. Mllama's
    processor writes ``<|begin_of_text|>`` into the text itself, so the tokenizer adds no second
    one (``add_special_tokens`` defaults to False).
    """

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("add_special_tokens", False)
        flat = _flatten_images(images, text, self.image_token)
        if flat is not None and text is not None:
            if not isinstance(flat, (list, tuple)):
                flat = [flat]
            remaining = iter(flat)
            prompts = [text] if isinstance(text, str) else text
            flat = [[next(remaining) for _ in range(p.count(self.image_token))] for p in prompts]
        return super().__call__(images=flat, text=text, **kwargs)

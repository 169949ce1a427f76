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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from tokenizers import processors as tokenizer_processors
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    MllamaConfig,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PaliGemmaConfig,
    PaliGemmaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVisionConfig,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)
from transformers.processing_utils import ProcessorMixin

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

TINY_FAMILIES: tuple[str, ...] = (
    "llava",
    "qwen2_vl",
    "idefics3",
    # built in the "LLaVA-NeXT ... Gemma3" blocks below
    "llava_next",
    "qwen2_5_vl",
    "smolvlm",
    "paligemma",
    "gemma3",
    # built in the "Qwen3-VL" and "Mllama" blocks below
    "qwen3_vl",
    "mllama",
)
"""Families `tiny_vlm` can build."""

TINY_IMAGE_SIZE = 32
"""Default side, in pixels, of the square images the tiny models see (inputs are resized)."""

TINY_IMAGE_PLACEHOLDER: dict[str, str] = {
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    # LLaVA-NeXT, Qwen2.5-VL, SmolVLM, PaliGemma, Gemma3
    "llava_next": "<image>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "smolvlm": "<image>",
    "paligemma": "<image>",
    "gemma3": "<start_of_image>",
    # Qwen3-VL, Mllama
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "mllama": "<|image|>",
}
"""What to write in a prompt, per family, where one image goes."""

_WORD_GROUPS: tuple[str, ...] = (
    # punctuation (each character is its own token)
    ". , ? ! : ; ' \" - ( ) / & + = % # * _ [ ] { } < > | @ $",
    # digits (numbers are split into single digits)
    "0 1 2 3 4 5 6 7 8 9",
    # chat roles and instructions
    "user assistant system question answer please describe tell me about briefly short word "
    "words one sentence image picture photo photograph shown show shows see look looks "
    "visible",
    # function words
    "a an the this that these those here there of in on at to for from with without by as and "
    "or but not no yes if so than then also very some any all each other only more most up "
    "down out into over under near between behind front left right top bottom middle next",
    # question words, pronouns, verbs
    "what who whom whose where when which why how many much is are was were be been being am "
    "do does did done have has had can could will would should may might must i you he she it "
    "we they me him her us them my your his its our their mine yours hers theirs someone "
    "somebody anyone nobody something nothing don't doesn't didn't isn't aren't wasn't can't "
    "cannot won't i'm it's he's she's that's there's what's who's let's know knows known "
    "unknown sure unsure sorry unable identify recognize recognise say said think believe "
    "guess maybe perhaps probably certain information private remember forget forgotten name "
    "names named called call person people man woman men women boy girl child adult face "
    "subject individual someone's born birth birthplace live lives lived living from grew "
    "raised city town country place home hometown nationality year years age old young date "
    "work works worked working job occupation profession career as colour color colours "
    "colors background foreground wear wears wearing wore glasses sunglasses hat cap shirt "
    "jacket dress tie hair eyes beard smile smiling dark light bright plain like likes "
    "favourite favorite hobby famous known",
    # colours
    "red green blue yellow orange purple violet pink brown black white grey gray gold silver "
    "cyan magenta teal navy beige maroon olive turquoise lime indigo",
    # first names
    "alice bob carol dave david eve frank grace heidi ivan judy mallory oscar peggy trent "
    "victor walter anna ben clara emma felix hannah isaac julia karl lena marco nina omar "
    "paula quentin rosa sam tara umar vera will xena yusuf zoe john mary james linda maria "
    "ahmed wei yuki priya sofia lucas mia noah olivia liam ava elena pedro fatima kenji ana",
    # family names
    "smith jones brown garcia miller davis wilson taylor moore martin lee walker hall young "
    "king wright lopez hill scott adams baker nelson carter mitchell perez roberts turner "
    "phillips campbell parker evans edwards collins stewart morris rossi schmidt mueller "
    "dubois tanaka kim chen wang singh silva novak",
    # cities
    "paris london berlin rome madrid tokyo beijing delhi cairo lagos lima oslo vienna prague "
    "dublin lisbon athens moscow sydney toronto chicago boston seattle mumbai seoul bangkok "
    "nairobi istanbul amsterdam stockholm warsaw zurich munich milan barcelona kyoto shanghai "
    "dubai mexico york new san francisco los angeles rio buenos aires cape",
    # countries
    "france germany italy spain japan china india egypt nigeria peru norway austria ireland "
    "portugal greece russia australia canada brazil kenya turkey usa uk england poland sweden "
    "switzerland netherlands korea thailand argentina chile morocco vietnam indonesia america "
    "united states kingdom",
    # occupations
    "doctor nurse teacher engineer lawyer chef cook pilot farmer artist painter singer "
    "musician writer author actor actress scientist programmer developer designer architect "
    "dentist baker carpenter plumber journalist photographer athlete student professor "
    "firefighter police officer soldier sailor driver judge banker accountant mechanic "
    "gardener librarian pharmacist veterinarian electrician dancer poet politician researcher "
    "surgeon waiter manager entrepreneur director economist historian astronaut",
)

TINY_WORDS: tuple[str, ...] = tuple(dict.fromkeys(" ".join(_WORD_GROUPS).split()))
"""The tiny tokenizers' words (lower-case; text is lower-cased before lookup)."""

_FAMILY_SPECIAL_TOKENS: dict[str, dict[str, Any]] = {
    "llava": {
        "pad": "<pad>",
        "bos": "<s>",
        "eos": "</s>",
        "unk": "<unk>",
        "image": "<image>",
        "extra": (),
    },
    "qwen2_vl": {
        "pad": "<|endoftext|>",
        "bos": None,
        "eos": "<|im_end|>",
        "unk": "<unk>",
        "image": "<|image_pad|>",
        "extra": ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
    },
    "idefics3": {
        "pad": "<pad>",
        "bos": "<s>",
        "eos": "<end_of_utterance>",
        "unk": "<unk>",
        "image": "<image>",
        "extra": (
            "<fake_token_around_image>",
            "<global-img>",
            *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
        ),
    },
}

# Chat templates in the spirit of each family's real one. Every template ends an assistant turn
# with the eos token, so models fine-tuned on rendered chats learn to stop.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ image }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
_CHAT_TEMPLATES: dict[str, str] = {
    "llava": "".join(
        [
            "{{ bos_token }}{% set image = '<image>\\n' %}",
            "{% for message in messages %}{{ message['role'] | upper }}: ",
            _CONTENT,
            "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}",
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}",
        ]
    ),
    "qwen2_vl": "".join(
        [
            "{% set image = '<|vision_start|><|image_pad|><|vision_end|>' %}",
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n",
            _CONTENT,
            "<|im_end|>\n{% endfor %}",
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        ]
    ),
    "idefics3": "".join(
        [
            "{{ bos_token }}{% set image = '<image>' %}",
            "{% for message in messages %}{{ message['role'] | capitalize }}:",
            "{% if message['content'] is string or message['content'][0]['type'] != 'image' %}",
            " {% endif %}",
            _CONTENT,
            "<end_of_utterance>\n{% endfor %}",
            "{% if add_generation_prompt %}Assistant:{% endif %}",
        ]
    ),
}

# ---- LLaVA-NeXT, Qwen2.5-VL, SmolVLM, PaliGemma, Gemma3: tokens and chat templates ---------------
# LLaVA-NeXT, Qwen2.5-VL and SmolVLM speak exactly like the family they extend.
_SAME_TOKENS_AS = {"llava_next": "llava", "qwen2_5_vl": "qwen2_vl", "smolvlm": "idefics3"}
for _new, _old in _SAME_TOKENS_AS.items():
    _FAMILY_SPECIAL_TOKENS[_new] = _FAMILY_SPECIAL_TOKENS[_old]
    _CHAT_TEMPLATES[_new] = _CHAT_TEMPLATES[_old]
_FAMILY_SPECIAL_TOKENS["paligemma"] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "unk": "<unk>",
    "image": "<image>",
    "extra": (),
    "prefix_bos": False,  # PaliGemmaProcessor writes bos itself, after the image tokens
}
_FAMILY_SPECIAL_TOKENS["gemma3"] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<end_of_turn>",  # as in Gemma3's generation config: ends an assistant turn
    "unk": "<unk>",
    "image": "<image_soft_token>",
    "extra": ("<start_of_turn>", "<start_of_image>", "<end_of_image>"),
    "words": ("model",),  # the assistant's role name in Gemma's chat format
    # Gemma3Processor reads these tokenizer attributes.
    "named": {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    },
}
# PaliGemma is a prefix LM without roles: the image comes first, then the text.
_CHAT_TEMPLATES["paligemma"] = "".join(
    [
        "{% set image = '<image>' %}{% for message in messages %}",
        _CONTENT,
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}",
    ]
)
_CHAT_TEMPLATES["gemma3"] = "".join(
    [
        "{{ bos_token }}{% set image = '<start_of_image>' %}",
        "{% for message in messages %}<start_of_turn>",
        "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n",
        _CONTENT,
        "<end_of_turn>\n{% endfor %}",
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ]
)
# ---- end of LLaVA-NeXT ... Gemma3 tokens ---------------------------------------------------------

# --- Qwen3-VL: Qwen2-VL's tokens and chat template ---------------------------------------------
_FAMILY_SPECIAL_TOKENS["qwen3_vl"] = _FAMILY_SPECIAL_TOKENS["qwen2_vl"]
_CHAT_TEMPLATES["qwen3_vl"] = _CHAT_TEMPLATES["qwen2_vl"]
# --- end Qwen3-VL ----------------------------------------------------------------------------

# --- Mllama: Llama 3 tokens and chat template ----------------------------------------------------
_FAMILY_SPECIAL_TOKENS["mllama"] = {
    "pad": "<|finetune_right_pad_id|>",
    "bos": "<|begin_of_text|>",
    "eos": "<|eot_id|>",
    "unk": "<unk>",
    "image": "<|image|>",
    "extra": ("<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>"),
}
_CHAT_TEMPLATES["mllama"] = "".join(
    [
        "{{ bos_token }}{% set image = '<|image|>' %}",
        "{% for message in messages %}",
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n",
        _CONTENT,
        "<|eot_id|>{% endfor %}",
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n",
        "{% endif %}",
    ]
)
# --- end Mllama --------------------------------------------------------------------------------

# Words: runs of letters/digits/underscores with inner apostrophes ("don't"), or one other
# non-space character. Digits are then split one by one, so every number is covered.
_WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"


def _check_family(family: str) -> None:
    if family not in TINY_FAMILIES:
        raise ValueError(
            f"Unknown tiny VLM family {family!r}; supported: {', '.join(TINY_FAMILIES)}."
        )


def tiny_tokenizer(family: str, extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """The in-memory word-level tokenizer `tiny_vlm` pairs with ``family``.

    The vocabulary is the family's special tokens (ids 0, 1, ...), then `TINY_WORDS`, then
    ``extra_words`` (lower-cased, duplicates dropped). Text is lower-cased and split into words
    (inner apostrophes kept, as in ``don't``), single punctuation characters and single digits;
    anything else becomes the unknown token. LLaVA(-NeXT), Idefics3, SmolVLM and Gemma3 prepend
    their bos token; Qwen*-VL add none; PaliGemma's processor writes bos itself, after the image.
    Decoding joins tokens with spaces.

    Args:
        family: One of `TINY_FAMILIES`.
        extra_words: More words to give tokens of their own.

    Returns:
        A `PreTrainedTokenizerFast` with pad, eos, unk (and bos) set, padding on the right.
    """
    _check_family(family)
    spec = _FAMILY_SPECIAL_TOKENS[family]
    specials = [spec["pad"], spec["eos"], spec["unk"], spec["image"], *spec["extra"]]
    if spec["bos"] is not None:
        specials.insert(1, spec["bos"])
    vocab: dict[str, int] = {token: index for index, token in enumerate(specials)}
    for word in (*TINY_WORDS, *spec.get("words", ()), *extra_words):
        word = word.lower()
        if not re.fullmatch(_WORD_PATTERN, word) or (word.isdigit() and len(word) > 1):
            raise ValueError(
                f"{word!r} cannot be a token of the tiny tokenizer: a word is letters, digits "
                "and inner apostrophes (no spaces), or a single punctuation character."
            )
        vocab.setdefault(word, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=spec["unk"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    if spec["bos"] is not None and spec.get("prefix_bos", True):
        backend.post_processor = tokenizer_processors.TemplateProcessing(
            single=f"{spec['bos']} $A",
            pair=f"{spec['bos']} $A {spec['bos']} $B",
            special_tokens=[(spec["bos"], vocab[spec["bos"]])],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=spec["pad"],
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        unk_token=spec["unk"],
        padding_side="right",
        chat_template=_CHAT_TEMPLATES[family],
        extra_special_tokens=dict(spec.get("named", {})),
    )
    return tokenizer


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


class TinyLlavaProcessor(_PerSampleImagesMixin, LlavaProcessor):
    """`LlavaProcessor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyIdefics3Processor(_PerSampleImagesMixin, Idefics3Processor):
    """`Idefics3Processor` that also takes per-sample image lists (see `tiny_vlm`)."""


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


class TinyQwen2VLProcessor(_ImagesOnlyQwenMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only: no video processor, so no torchvision needed.

    Each ``<|image_pad|>`` becomes ``prod(image_grid_thw) // merge_size**2`` image tokens, and
    ``mm_token_type_ids`` (which the model needs with ``image_grid_thw``) is returned. It also
    takes per-sample image lists.
    """


# --- Qwen3-VL ---------------------------------------------------------------------------------


class TinyQwen3VLProcessor(_ImagesOnlyQwenMixin, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (no torchvision), as `TinyQwen2VLProcessor`."""

    special_tokens: ClassVar[Mapping[str, str]] = {
        **_ImagesOnlyQwenMixin.special_tokens,
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    }


def _qwen3_vl_config(
    text: dict[str, Any], vision_overrides: dict[str, Any], token_id: Callable[[str], int]
) -> Qwen3VLConfig:
    """Qwen3-VL: Qwen2-VL's tiny geometry, interleaved M-RoPE and deepstack into layers 0, 1."""
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
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,  # an 8 x 8 patch grid, interpolated for other sizes
    }
    vision.update(vision_overrides)
    for alias, key in Qwen3VLVisionConfig.attribute_map.items():  # num_hidden_layers -> depth...
        if alias in vision:
            vision[key] = vision.pop(alias)
    depth = vision["depth"]
    # Features of the first vision layers enter the first decoder layers (real models: 3 of each).
    vision.setdefault("deepstack_visual_indexes", [index for index in (0, 1) if index < depth])
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


# --- end Qwen3-VL ----------------------------------------------------------------------------


# --- Mllama -----------------------------------------------------------------------------------


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


def _mllama_config(
    text: dict[str, Any],
    vision: dict[str, Any],
    vision_overrides: dict[str, Any],
    image_size: int,
    image_token_id: int,
) -> MllamaConfig:
    """Mllama: a cross-attention layer every other decoder layer from layer 1; one tile per image.

    Each image is one 32 px tile of 16 patches plus the class token: 17 visual states. Layer 0
    must self-attend: transformers reads the text length off the cache of layer 0.
    """
    text.setdefault("cross_attention_layers", list(range(1, text["num_hidden_layers"], 2)))
    vision = {
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "attention_heads": vision["num_attention_heads"],
        "num_global_layers": 1,
        "image_size": image_size,
        "patch_size": 8,
        "max_num_tiles": 1,
        "supported_aspect_ratios": [[1, 1]],
        "intermediate_layers_indices": [0],
    }
    vision.update(vision_overrides)
    # The projector reads the last layer concatenated with the intermediate ones.
    vision.setdefault(
        "vision_output_dim",
        vision["hidden_size"] * (1 + len(vision["intermediate_layers_indices"])),
    )
    return MllamaConfig(text_config=text, vision_config=vision, image_token_index=image_token_id)


def _open_cross_attention_gates(model: PreTrainedModel) -> None:
    """Give Mllama's tanh gates a value: they start at 0, where the image has no effect at all."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)


# --- end Mllama --------------------------------------------------------------------------------


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (temporal, height, width) split of the rotary half-dimension."""
    half = head_dim // 2
    spatial = half * 3 // 8
    return [half - 2 * spatial, spatial, spatial]


def _build_config(
    family: str,
    tokenizer: PreTrainedTokenizerFast,
    text_overrides: dict[str, Any],
    vision_overrides: dict[str, Any],
    image_size: int,
) -> PretrainedConfig:
    def token_id(token: str) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(index, int):
            raise TypeError(f"{token!r} is not one token of the tiny tokenizer.")
        return index

    spec = _FAMILY_SPECIAL_TOKENS[family]
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": token_id(spec["pad"]),
        "bos_token_id": None if spec["bos"] is None else token_id(spec["bos"]),
        "eos_token_id": token_id(spec["eos"]),
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
    image_token_id = token_id(spec["image"])
    if family == "qwen3_vl":
        return _qwen3_vl_config(text, vision_overrides, token_id)
    if family == "mllama":
        return _mllama_config(text, vision, vision_overrides, image_size, image_token_id)

    if family in ("llava", "llava_next"):
        vision.update(image_size=image_size, patch_size=8, projection_dim=32)
        vision.update(vision_overrides)
        vision_config: Any = CLIPVisionConfig(**vision)
        grid = vision_config.image_size // vision_config.patch_size
        llava: dict[str, Any] = {
            "vision_config": vision_config,
            "text_config": LlamaConfig(**text),
            "image_token_index": image_token_id,
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
            "tie_word_embeddings": text["tie_word_embeddings"],
        }
        if family == "llava_next":
            return LlavaNextConfig(
                **llava,
                image_grid_pinpoints=_anyres_pinpoints(vision_config.image_size),
                image_seq_length=grid * grid,
            )
        return LlavaConfig(**llava, image_seq_length=grid * grid)

    if family in ("qwen2_vl", "qwen2_5_vl"):
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        text.setdefault(
            "rope_parameters",
            {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim),
            },
        )
        qwen: dict[str, Any] = {
            "text_config": text,
            "image_token_id": image_token_id,
            "video_token_id": token_id("<|video_pad|>"),
            "vision_start_token_id": token_id("<|vision_start|>"),
            "vision_end_token_id": token_id("<|vision_end|>"),
            "tie_word_embeddings": text["tie_word_embeddings"],
        }
        patches = {"patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}
        if family == "qwen2_5_vl":
            return Qwen2_5_VLConfig(
                **qwen, vision_config=_qwen2_5_vision(vision, patches, text, vision_overrides)
            )
        vision = {
            "depth": vision.pop("num_hidden_layers"),
            "embed_dim": vision.pop("hidden_size"),
            "num_heads": vision.pop("num_attention_heads"),
            "mlp_ratio": 2,
            "hidden_size": text["hidden_size"],  # the merger's output: the text width
            **patches,
        }
        vision.update(vision_overrides)
        return Qwen2VLConfig(**qwen, vision_config=vision)

    if family in ("paligemma", "gemma3"):
        return _gemma_family_config(
            family, text, vision, vision_overrides, image_size, image_token_id, token_id
        )

    vision.update(image_size=image_size, patch_size=4)
    vision.update(vision_overrides)
    # Idefics3Config and SmolVLMConfig keep a deprecated top-level pad id (default 128002,
    # outside this vocab).
    legacy: dict[str, Any] = {"pad_token_id": text["pad_token_id"]}
    config_class = SmolVLMConfig if family == "smolvlm" else Idefics3Config
    return config_class(
        text_config=LlamaConfig(**text),
        vision_config=vision,
        image_token_id=image_token_id,
        scale_factor=2,
        tie_word_embeddings=text["tie_word_embeddings"],
        **legacy,
    )


# ---- LLaVA-NeXT, Qwen2.5-VL, PaliGemma, Gemma3: config helpers -----------------------------------


def _anyres_pinpoints(side: int) -> list[list[int]]:
    """LLaVA-NeXT's anyres resolutions: one square tile, or two side by side / stacked.

    A square image stays one tile (plus the downscaled base image); a wide or tall one is split
    in two tiles and then unpadded, so its token count depends on its aspect ratio.
    """
    return [[side, side], [side, 2 * side], [2 * side, side]]


def _qwen2_5_vision(
    vision: dict[str, Any],
    patches: dict[str, int],
    text: dict[str, Any],
    vision_overrides: dict[str, Any],
) -> dict[str, Any]:
    """Qwen2.5-VL's vision config: windowed attention whose windows permute the merger's rows.

    A window of 2 x 2 merged tokens (``window_size`` 16 px with patch 4 and merge 2) makes the
    merger output come out in window order, not in row-major token order, already at 32 px: the
    case CAGUL's by-position indexing exists for. The last block attends fully.
    """
    settings: dict[str, Any] = {
        "depth": vision["num_hidden_layers"],
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_heads": vision["num_attention_heads"],
        "out_hidden_size": text["hidden_size"],  # the merger's output: the text width
        "window_size": 2 * patches["patch_size"] * patches["spatial_merge_size"],
        **patches,
    }
    settings.update(vision_overrides)
    settings.setdefault("fullatt_block_indexes", [settings["depth"] - 1])
    return settings


def _gemma_family_config(
    family: str,
    text: dict[str, Any],
    vision: dict[str, Any],
    vision_overrides: dict[str, Any],
    image_size: int,
    image_token_id: int,
    token_id: Callable[[str], int],
) -> PretrainedConfig:
    """PaliGemma (Gemma text) or Gemma3 (Gemma3 text) config with a SigLIP vision tower.

    Both give ``(image_size / 8) ** 2`` visual tokens: PaliGemma through patch 8, Gemma3
    through patch 4 and its 2 x 2 average pooling (``mm_tokens_per_image``).
    """
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    text.setdefault("head_dim", head_dim)  # Gemma's default head_dim is 256
    vision.update(image_size=image_size, patch_size=8 if family == "paligemma" else 4)
    vision.update(vision_overrides)
    vision_config = SiglipVisionConfig(**vision)
    if family == "paligemma":
        return PaliGemmaConfig(
            vision_config=vision_config,
            text_config=GemmaConfig(**text),
            image_token_index=image_token_id,
            projection_dim=text["hidden_size"],
            tie_word_embeddings=text["tie_word_embeddings"],
        )
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
    tokens_per_side = int(vision["image_size"]) // 8
    return Gemma3Config(
        vision_config=vision_config,
        text_config=Gemma3TextConfig(**text),
        mm_tokens_per_image=tokens_per_side * tokens_per_side,
        image_token_index=image_token_id,
        boi_token_index=token_id("<start_of_image>"),
        eoi_token_index=token_id("<end_of_image>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )


# ---- end of LLaVA-NeXT ... Gemma3 config helpers -------------------------------------------------


def _qwen_image_processor(vision: Any, image_size: int) -> Qwen2VLImageProcessorPil:
    """Qwen*-VL's image processor, fixed to ``image_size`` square images."""
    factor = vision.patch_size * vision.spatial_merge_size
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not a multiple of {factor}.")
    return Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=image_size * image_size,
        max_pixels=image_size * image_size,
    )


def _build_processor(
    family: str, config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, image_size: int
) -> ProcessorMixin:
    vision = config.vision_config
    template = _CHAT_TEMPLATES[family]
    if family == "mllama":
        if vision.image_size % vision.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of {vision.patch_size}.")
        mllama_processor = MllamaImageProcessorPil(
            size={"height": vision.image_size, "width": vision.image_size},
            max_image_tiles=vision.max_num_tiles,
        )
        return TinyMllamaProcessor(
            image_processor=mllama_processor, tokenizer=tokenizer, chat_template=template
        )
    if family in ("llava", "llava_next"):
        if image_size % vision.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of {vision.patch_size}.")
        llava: dict[str, Any] = {
            "tokenizer": tokenizer,
            "patch_size": vision.patch_size,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "num_additional_image_tokens": 1,  # CLIP's class token, dropped by "default"
            "chat_template": template,
        }
        size = {"shortest_edge": image_size}
        crop_size = {"height": image_size, "width": image_size}
        if family == "llava_next":
            return TinyLlavaNextProcessor(
                image_processor=LlavaNextImageProcessorPil(
                    size=size,
                    crop_size=crop_size,
                    image_grid_pinpoints=config.image_grid_pinpoints,
                ),
                **llava,
            )
        return TinyLlavaProcessor(
            image_processor=CLIPImageProcessorPil(size=size, crop_size=crop_size), **llava
        )
    qwen_processors: dict[str, type[_ImagesOnlyQwenMixin]] = {
        "qwen2_vl": TinyQwen2VLProcessor,
        "qwen2_5_vl": TinyQwen2_5_VLProcessor,
        "qwen3_vl": TinyQwen3VLProcessor,
    }
    if family in qwen_processors:
        return qwen_processors[family](  # type: ignore[return-value]
            image_processor=_qwen_image_processor(vision, image_size),
            tokenizer=tokenizer,
            chat_template=template,
        )
    if family in ("paligemma", "gemma3"):
        return _gemma_family_processor(family, config, tokenizer, template)
    patches = vision.image_size // vision.patch_size
    if vision.image_size % vision.patch_size or patches % config.scale_factor:
        raise ValueError(
            f"image_size {vision.image_size} must be a multiple of patch_size x scale_factor "
            f"({vision.patch_size} x {config.scale_factor})."
        )
    splitting: dict[str, Any] = {
        "do_image_splitting": False,
        "size": {"longest_edge": image_size},
        "max_image_size": {"longest_edge": image_size},
    }
    idefics: dict[str, Any] = {
        "tokenizer": tokenizer,
        "image_seq_len": (patches // config.scale_factor) ** 2,
        "chat_template": template,
    }
    if family == "smolvlm":
        return TinySmolVLMProcessor(
            image_processor=SmolVLMImageProcessorPil(**splitting), **idefics
        )
    return TinyIdefics3Processor(image_processor=Idefics3ImageProcessorPil(**splitting), **idefics)


# ---- LLaVA-NeXT, Qwen2.5-VL, SmolVLM, PaliGemma, Gemma3: processors ------------------------------


class TinyLlavaNextProcessor(_PerSampleImagesMixin, LlavaNextProcessor):
    """`LlavaNextProcessor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyQwen2_5_VLProcessor(_ImagesOnlyQwenMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only, as `TinyQwen2VLProcessor` (no torchvision)."""


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


def _gemma_family_processor(
    family: str, config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, template: str
) -> ProcessorMixin:
    """PaliGemma's or Gemma3's processor around a SigLIP-style image processor."""
    side = config.vision_config.image_size
    size = {"height": side, "width": side}
    if family == "paligemma":
        image_processor = SiglipImageProcessorPil(size=size)
        # PaliGemmaProcessor reads the number of image tokens from its image processor.
        image_processor.image_seq_length = config.text_config.num_image_tokens  # type: ignore[attr-defined]
        return TinyPaliGemmaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )
    return TinyGemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size=size, do_pan_and_scan=False),
        tokenizer=tokenizer,
        image_seq_length=config.mm_tokens_per_image,
        chat_template=template,
    )


def _make_image_visible(model: PreTrainedModel) -> None:
    """Give Gemma3's zero-initialised image projection random weights (else every visual token
    is 0 and the image cannot change the output), and open Mllama's zero cross-attention gates
    (else the image has no effect at all)."""
    projector = getattr(getattr(model, "model", None), "multi_modal_projector", None)
    weight = getattr(projector, "mm_input_projection_weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.normal_(std=weight.shape[0] ** -0.5)
    _open_cross_attention_gates(model)


# ---- end of LLaVA-NeXT ... Gemma3 processors -----------------------------------------------------


def tiny_vlm(
    family: str,
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
            ``"qwen3_vl"`` or ``"mllama"``.
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
    _check_family(family)
    vision_overrides = dict(vision_config or {})
    image_size = int(vision_overrides.pop("image_size", image_size))
    tokenizer = tiny_tokenizer(family, extra_words)
    config = _build_config(family, tokenizer, dict(overrides), vision_overrides, image_size)
    processor = _build_processor(family, config, tokenizer, image_size)

    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, **kwargs)
        _make_image_visible(model)
    model.eval()

    generation_config = model.generation_config
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor

"""Tiny, randomly initialised vision-language models for tests, examples and benchmarks.

`tiny_vlm` builds a real `transformers` VLM (LLaVA 1.5, Qwen2-VL, Idefics3, Qwen3-VL) from a
tiny config, fully offline and in-process, together with a matching processor: a real `transformers`
processor class around a word-level tokenizer built in memory and the family's PIL image
processor (torchvision is not needed).

Defaults (every family): 32 x 32 px images, 16 visual tokens per image, a 2-layer vision
encoder, a 2-layer text decoder with hidden size 64 (4 query heads, 2 key/value heads) and a
vocabulary of a few hundred lower-cased words (`TINY_WORDS`).

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

Keep two images of one prompt apart (some text between them) so each image is one run of
image tokens.

``processor.apply_chat_template`` renders ``{"type": "image"}`` content items to the
placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from tokenizers import processors as tokenizer_processors
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    MllamaConfig,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVisionConfig,
)
from transformers.processing_utils import ProcessorMixin

__all__ = [
    "TINY_FAMILIES",
    "TINY_IMAGE_PLACEHOLDER",
    "TINY_IMAGE_SIZE",
    "TINY_WORDS",
    "TinyIdefics3Processor",
    "TinyLlavaProcessor",
    "TinyMllamaProcessor",
    "TinyQwen2VLProcessor",
    "TinyQwen3VLProcessor",
    "tiny_tokenizer",
    "tiny_vlm",
]

TINY_FAMILIES: tuple[str, ...] = ("llava", "qwen2_vl", "idefics3", "qwen3_vl", "mllama")
"""Families `tiny_vlm` can build."""

TINY_IMAGE_SIZE = 32
"""Default side, in pixels, of the square images the tiny models see (inputs are resized)."""

TINY_IMAGE_PLACEHOLDER: dict[str, str] = {
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
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
    anything else becomes the unknown token. LLaVA and Idefics3 prepend the bos token ``<s>``;
    Qwen2-VL adds none. Decoding joins tokens with spaces.

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
    for word in (*TINY_WORDS, *extra_words):
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
    if spec["bos"] is not None:
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


class _PerSampleImagesMixin:
    """Lets ``images`` be given per sample, with ``None`` (or ``[]``) for text-only samples."""

    image_token: str

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        images = _flatten_images(images, text, self.image_token)
        return super().__call__(images=images, text=text, **kwargs)  # type: ignore[misc]


class TinyLlavaProcessor(_PerSampleImagesMixin, LlavaProcessor):
    """`LlavaProcessor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyIdefics3Processor(_PerSampleImagesMixin, Idefics3Processor):
    """`Idefics3Processor` that also takes per-sample image lists (see `tiny_vlm`)."""


class TinyQwen2VLProcessor(_PerSampleImagesMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only: no video processor, so no torchvision needed.

    transformers' class insists on a video processor, which needs torchvision. This subclass
    drops it and keeps everything else: each ``<|image_pad|>`` becomes
    ``prod(image_grid_thw) // merge_size**2`` image tokens, and ``mm_token_type_ids`` (which the
    model needs with ``image_grid_thw``) is returned. It also takes per-sample image lists.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# --- Qwen3-VL ---------------------------------------------------------------------------------


class TinyQwen3VLProcessor(_PerSampleImagesMixin, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (no torchvision), as `TinyQwen2VLProcessor`."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        TinyQwen2VLProcessor.__init__(self, image_processor, tokenizer, chat_template)  # type: ignore[arg-type]
        self.vision_start_token = "<|vision_start|>"
        self.vision_end_token = "<|vision_end|>"
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)


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

    if family == "llava":
        vision.update(image_size=image_size, patch_size=8, projection_dim=32)
        vision.update(vision_overrides)
        vision_config: Any = CLIPVisionConfig(**vision)
        grid = vision_config.image_size // vision_config.patch_size
        return LlavaConfig(
            vision_config=vision_config,
            text_config=LlamaConfig(**text),
            image_token_index=image_token_id,
            image_seq_length=grid * grid,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            tie_word_embeddings=text["tie_word_embeddings"],
        )

    if family == "qwen2_vl":
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        text.setdefault(
            "rope_parameters",
            {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim),
            },
        )
        vision = {
            "depth": vision.pop("num_hidden_layers"),
            "embed_dim": vision.pop("hidden_size"),
            "num_heads": vision.pop("num_attention_heads"),
            "mlp_ratio": 2,
            "hidden_size": text["hidden_size"],  # the merger's output: the text width
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        vision.update(vision_overrides)
        return Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image_token_id,
            video_token_id=token_id("<|video_pad|>"),
            vision_start_token_id=token_id("<|vision_start|>"),
            vision_end_token_id=token_id("<|vision_end|>"),
            tie_word_embeddings=text["tie_word_embeddings"],
        )

    vision.update(image_size=image_size, patch_size=4)
    vision.update(vision_overrides)
    # Idefics3Config keeps a deprecated top-level pad id (default 128002, outside this vocab).
    legacy: dict[str, Any] = {"pad_token_id": text["pad_token_id"]}
    return Idefics3Config(
        text_config=LlamaConfig(**text),
        vision_config=vision,
        image_token_id=image_token_id,
        scale_factor=2,
        tie_word_embeddings=text["tie_word_embeddings"],
        **legacy,
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
    if family == "llava":
        if image_size % vision.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of {vision.patch_size}.")
        clip_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        return TinyLlavaProcessor(
            image_processor=clip_processor,
            tokenizer=tokenizer,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
            chat_template=template,
        )
    if family in ("qwen2_vl", "qwen3_vl"):
        factor = vision.patch_size * vision.spatial_merge_size
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not a multiple of {factor}.")
        qwen_processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
            min_pixels=image_size * image_size,
            max_pixels=image_size * image_size,
        )
        qwen_class = TinyQwen2VLProcessor if family == "qwen2_vl" else TinyQwen3VLProcessor
        return qwen_class(
            image_processor=qwen_processor, tokenizer=tokenizer, chat_template=template
        )
    patches = vision.image_size // vision.patch_size
    if vision.image_size % vision.patch_size or patches % config.scale_factor:
        raise ValueError(
            f"image_size {vision.image_size} must be a multiple of patch_size x scale_factor "
            f"({vision.patch_size} x {config.scale_factor})."
        )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return TinyIdefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(patches // config.scale_factor) ** 2,
        chat_template=template,
    )


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

    Sizes by default: 32 px images and 16 visual tokens per image; vision encoder with 2 layers,
    width 32; text decoder (Llama for LLaVA and Idefics3, Qwen2 for Qwen2-VL, Qwen3 for Qwen3-VL,
    whose vision layers 0 and 1 also feed decoder layers 0 and 1: deepstack) with 2 layers,
    hidden size 64, 4 attention heads, 2 key/value heads, float32.

    The processor is the family's transformers processor (`LlavaProcessor`,
    `Idefics3Processor`, or `Qwen2VLProcessor` without its torchvision-only video part) with
    the family's PIL image processor, so it is called like any HF processor::

        inputs = processor(images=[img, None], text=[f"{TINY_IMAGE_PLACEHOLDER[family]} what "
                           "is this?", "who is he?"], return_tensors="pt", padding=True)

    ``images`` is either transformers' flat list (images in the order of the placeholders in
    the batch) or one entry per sample: an image, a list of images, or ``None`` for a text-only
    sample. Each placeholder (`TINY_IMAGE_PLACEHOLDER`) becomes the image's visual tokens.
    Idefics3 has image splitting off: each image is resized to ``image_size`` square and gives
    one run of tokens. Qwen2-VL keeps the aspect ratio, so only square images give exactly 16
    tokens, and its outputs hold ``image_grid_thw`` and ``mm_token_type_ids``. Padding is on
    the right; set ``processor.tokenizer.padding_side = "left"`` for batched generation.

    Args:
        family: One of `TINY_FAMILIES`: ``"llava"``, ``"qwen2_vl"``, ``"idefics3"``,
            ``"qwen3_vl"``.
        seed: Seed for the random weights.
        vision_config: Updates to the vision config, in the family's vision-config keys
            (CLIP for LLaVA, ``Qwen2VLVisionConfig`` for Qwen2-VL: ``depth``, ``embed_dim``,
            ``num_heads``...; ``Idefics3VisionConfig``; ``Qwen3VLVisionConfig``: ``depth``,
            ``hidden_size``, ``deepstack_visual_indexes``...), e.g. ``{"num_hidden_layers": 1}``. An
            ``image_size`` key here counts as the ``image_size`` argument.
        image_size: Side of the square images the vision encoder sees. Visual tokens per image
            are ``(image_size / 8) ** 2`` by default in every family (LLaVA: patch 8; Qwen2-VL:
            patch 4, 2 x 2 merge; Idefics3: patch 4, scale factor 2).
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
    if family == "mllama":
        _open_cross_attention_gates(model)
    model.eval()

    generation_config = model.generation_config
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor

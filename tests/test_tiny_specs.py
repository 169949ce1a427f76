"""Tests for `hf_cagul.testing`'s spec objects, its registry and the `hf_cagul.tiny` re-export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import CLIPVisionConfig, LlavaConfig, PretrainedConfig, Qwen2Config
from vlm_inputs import batch, image

import hf_cagul.testing
import hf_cagul.tiny
from hf_cagul.cli import load_processor
from hf_cagul.families import get_family
from hf_cagul.testing import (
    TINY_FAMILIES,
    TINY_FAMILY_SPECS,
    TINY_IMAGE_PLACEHOLDER,
    ConfigParts,
    TinyFamily,
    tiny_family,
    tiny_tokenizer,
    tiny_vlm,
)
from hf_cagul.testing.llava import LLAVA

# Every public name `hf_cagul.tiny` had before it became a re-export of `hf_cagul.testing`.
TINY_PUBLIC_NAMES = {
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
}


def _samples() -> list[tuple[str, list[Any]]]:
    """One sample with an image, one text-only, one with two images (apart, as prompts do)."""
    return [
        ("{image} what is the name of this person ?", [image(1)]),
        ("where was alice born ?", []),
        ("{image} and {image} what colour is the background ?", [image(2, 48), image(3)]),
    ]


def _assert_same_inputs(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_re_exports_hf_cagul_testing() -> None:
    assert set(hf_cagul.tiny.__all__) >= TINY_PUBLIC_NAMES
    for name in hf_cagul.tiny.__all__:
        assert getattr(hf_cagul.tiny, name) is getattr(hf_cagul.testing, name), name


def test_registry_lists_each_spec_once_under_its_name() -> None:
    assert tuple(TINY_FAMILY_SPECS) == TINY_FAMILIES
    assert all(TINY_FAMILY_SPECS[name].name == name for name in TINY_FAMILIES)
    assert {name: spec.placeholder for name, spec in TINY_FAMILY_SPECS.items()} == dict(
        TINY_IMAGE_PLACEHOLDER
    )
    assert all(tiny_family(name) is TINY_FAMILY_SPECS[name] for name in TINY_FAMILIES)
    assert all(get_family(name).name == name for name in TINY_FAMILIES)  # CAGUL supports each
    with pytest.raises(TypeError):
        TINY_FAMILY_SPECS["blip2"] = LLAVA  # type: ignore[index]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_extra_inputs_are_what_the_processor_adds(family: str) -> None:
    _, processor = tiny_vlm(family)
    inputs = batch(processor, family, _samples())
    base = {"input_ids", "attention_mask", "pixel_values"}
    assert set(inputs) == base | tiny_family(family).extra_inputs


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_saved_processor_round_trips_from_both_import_paths(family: str, tmp_path: Path) -> None:
    _, processor = tiny_vlm(family)
    processor.save_pretrained(tmp_path)
    name = json.loads((tmp_path / "processor_config.json").read_text())["processor_class"]
    assert name == type(processor).__name__
    expected = batch(processor, family, _samples())

    reloaded = [
        getattr(hf_cagul.tiny, name).from_pretrained(tmp_path),
        getattr(hf_cagul.testing, name).from_pretrained(tmp_path),
        load_processor(str(tmp_path)),
    ]
    for loaded in reloaded:
        assert type(loaded) is type(processor)
        assert loaded.chat_template == processor.chat_template
        _assert_same_inputs(batch(loaded, family, _samples()), expected)


# A family the registry does not list: LLaVA's tokens, template and processor around a Qwen2
# decoder, with one more special token and a weight fix of its own.
def _llava_qwen2_config(parts: ConfigParts) -> PretrainedConfig:
    vision = {**parts.vision, "image_size": parts.image_size, "patch_size": 8}
    vision_config = CLIPVisionConfig(**{**vision, **parts.vision_overrides})
    grid = vision_config.image_size // vision_config.patch_size
    return LlavaConfig(
        vision_config=vision_config,
        text_config=Qwen2Config(**parts.text),
        image_token_index=parts.image_token_id,
        image_seq_length=grid * grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def _draw_projector_bias(model: Any) -> None:
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.bias.normal_()


LLAVA_QWEN2 = TinyFamily(
    name="llava_qwen2",
    placeholder=LLAVA.placeholder,
    tokens=dataclasses.replace(LLAVA.tokens, extra=("<|im_start|>",)),
    chat_template=LLAVA.chat_template,
    build_config=_llava_qwen2_config,
    build_processor=LLAVA.build_processor,
    make_image_visible=_draw_projector_bias,
)


def test_a_spec_is_all_a_new_family_needs() -> None:
    rng_before = torch.random.get_rng_state()
    model, processor = tiny_vlm(LLAVA_QWEN2, seed=3, num_hidden_layers=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert LLAVA_QWEN2.name not in TINY_FAMILIES  # built from the spec alone
    text_config = model.config.get_text_config(decoder=True)
    assert (text_config.model_type, text_config.num_hidden_layers) == ("qwen2", 3)

    tokenizer = processor.tokenizer  # type: ignore[attr-defined]
    assert len(tokenizer) == len(tiny_tokenizer(LLAVA_QWEN2)) == len(tiny_tokenizer("llava")) + 1
    assert tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids("<|im_start|>")) == (
        "<|im_start|>"
    )
    # The spec's weight fix ran under the seed: drawn, and drawn the same way again.
    bias = model.model.multi_modal_projector.linear_2.bias  # type: ignore[union-attr]
    assert bool(bias.ne(0).all())
    again, _ = tiny_vlm(LLAVA_QWEN2, seed=3, num_hidden_layers=3)
    assert torch.equal(again.model.multi_modal_projector.linear_2.bias, bias)  # type: ignore[union-attr]

    first, second = (
        batch(processor, "llava", [("{image} who is this ?", [image(seed)])]) for seed in (1, 2)
    )
    assert int((first["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert not torch.allclose(model(**first).logits[0, -1], model(**second).logits[0, -1])

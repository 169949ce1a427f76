"""Tests for `hf_cagul.testing`: tiny offline VLMs and their processors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_inputs import processor_keys, tokens_per_image

from hf_cagul.families import get_family
from hf_cagul.testing import (
    TINY_FAMILIES,
    TINY_IMAGE_PLACEHOLDER,
    TINY_WORDS,
    tiny_tokenizer,
    tiny_vlm,
)

# transformers' Mllama does not zero the cross-attention output of text rows that may see no
# image: beside images, a text-only sample attends uniformly to its all-padding image slot, so
# it does not score exactly as when processed alone (the model's behaviour, not the builder's).
TEXT_ONLY_SAMPLES_SEE_PADDING_IMAGES = {"mllama"}


def _image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _batch(family: str) -> tuple[list[Any], list[str]]:
    """One sample with an image, one text-only, one with two images (apart, as prompts do)."""
    ph = TINY_IMAGE_PLACEHOLDER[family]
    images: list[Any] = [_image(1), None, [_image(2, (48, 48)), _image(3)]]
    text = [
        f"{ph} what is the name of this person?",
        "where was alice born?",
        f"{ph} and {ph} what colour is the background?",
    ]
    return images, text


def _tiny(family: str, **kwargs: Any) -> tuple[Any, Any]:
    """`tiny_vlm`, typed loosely: the processor's attributes depend on the family."""
    return tiny_vlm(family, **kwargs)


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_seed_determinism_and_eager_twin(family: str) -> None:
    rng_before = torch.random.get_rng_state()
    model, _ = _tiny(family, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    again, _ = _tiny(family, seed=0)
    other, _ = _tiny(family, seed=1)
    eager, _ = _tiny(family, seed=0, attn_implementation="eager")

    assert _state_dicts_equal(model, again)
    assert _state_dicts_equal(model, eager)
    assert not _state_dicts_equal(model, other)
    assert not model.training and not eager.training
    assert model.config.text_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"

    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 1_000_000
    text_config = model.config.get_text_config(decoder=True)
    assert (text_config.num_hidden_layers, text_config.hidden_size) == (2, 64)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_config_and_tokenizer_agree(family: str) -> None:
    model, processor = _tiny(family)
    tokenizer = processor.tokenizer
    config = model.config
    text_config = config.get_text_config(decoder=True)

    # Gemma3's processor calls its placeholder (begin-of-image) its image token; the model's
    # image token is the soft token that placeholder expands to.
    placeholder_id = config.boi_token_id if family == "gemma3" else config.image_token_id
    assert placeholder_id == processor.image_token_id
    assert placeholder_id == tokenizer.convert_tokens_to_ids(processor.image_token)
    assert processor.image_token in TINY_IMAGE_PLACEHOLDER[family]
    assert text_config.vocab_size == len(tokenizer)
    assert text_config.pad_token_id == tokenizer.pad_token_id is not None
    assert text_config.eos_token_id == tokenizer.eos_token_id is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)

    # Every vocabulary word is a token of its own; numbers split into digits; case is ignored.
    sentence = "What is the name of this person? I don't know. Born in 1985, Paris."
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids)[-7:] == ["1", "9", "8", "5", ",", "paris", "."]
    words = tokenizer(" ".join(TINY_WORDS), add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in words
    assert len(set(words)) == len(TINY_WORDS)
    assert (
        tokenizer.decode(ids)
        == "what is the name of this person ? i don't know . born in 1 9 8 5 , paris ."
    )
    assert tokenizer("zyxw", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_forward_and_generate(family: str, padding_side: str) -> None:
    model, processor = _tiny(family)
    processor.tokenizer.padding_side = padding_side
    images, text = _batch(family)
    inputs = processor(images=images, text=text, return_tensors="pt", padding=True)

    assert processor_keys(family) <= set(inputs)
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    image_tokens = (input_ids == model.config.image_token_id).sum(dim=1)
    per_image = tokens_per_image(family)
    assert image_tokens.tolist() == [per_image, 0, 2 * per_image]
    short = int(mask.sum(dim=1).argmin())
    pad_at = 0 if padding_side == "left" else -1
    assert mask[short, pad_at] == 0 and input_ids[short, pad_at] == processor.tokenizer.pad_token_id

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (3, input_ids.shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()

    # Padding changes nothing: each sample's last real token scores as when processed alone.
    for i in range(3):
        if images[i] is None and family in TEXT_ONLY_SAMPLES_SEE_PADDING_IMAGES:
            continue
        alone = processor(images=[images[i]], text=[text[i]], return_tensors="pt")
        with torch.no_grad():
            expected = model(**alone).logits[0, -1]
        last = int(mask[i].nonzero().max())
        torch.testing.assert_close(logits[i, last], expected, atol=1e-5, rtol=1e-4)

    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert input_ids.shape[1] < generated.shape[1] <= input_ids.shape[1] + 3
    assert torch.equal(generated[:, : input_ids.shape[1]], input_ids)
    answers = processor.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_reaches_the_model(family: str) -> None:
    model, processor = _tiny(family)
    prompt = [f"{TINY_IMAGE_PLACEHOLDER[family]} who is this?"]
    first = processor(images=[_image(1)], text=prompt, return_tensors="pt")
    second = processor(images=[_image(2)], text=prompt, return_tensors="pt")
    assert torch.equal(first["input_ids"], second["input_ids"])
    with torch.no_grad():
        assert not torch.allclose(model(**first).logits[0, -1], model(**second).logits[0, -1])

    if not get_family(family).expands_image_tokens:
        return  # one placeholder per image: no token count for the model to check
    # The model checks image tokens against image features: one token short fails.
    ids = first["input_ids"].clone()
    ids[0, int((ids[0] == model.config.image_token_id).nonzero()[0])] = 0
    with pytest.raises(ValueError, match="image tokens"):
        model(**{**first, "input_ids": ids})


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_eager_twin_matches_and_returns_attentions(family: str) -> None:
    model, processor = _tiny(family)
    eager, _ = _tiny(family, attn_implementation="eager")
    images, text = _batch(family)
    inputs = processor(images=images, text=text, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        eager_out = eager(**inputs, output_attentions=True)
    # Padding positions are left out: a padding query that sees no key within Gemma3's sliding
    # window has no distribution, and sdpa and eager fill such rows differently.
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[real], eager_out.logits[real], atol=1e-5, rtol=1e-4)
    seq = inputs["input_ids"].shape[1]
    assert len(eager_out.attentions) == 2
    assert eager_out.attentions[0].shape == (3, 4, seq, seq)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_overrides(family: str) -> None:
    depth_key = "depth" if family in ("qwen2_vl", "qwen2_5_vl") else "num_hidden_layers"
    model, processor = _tiny(
        family,
        num_hidden_layers=3,
        hidden_size=96,
        vision_config={"image_size": 64, depth_key: 1},
        extra_words=["Zyxw", "qwerty"],
    )
    text_config = model.config.get_text_config(decoder=True)
    assert (text_config.num_hidden_layers, text_config.hidden_size) == (3, 96)
    assert getattr(model.config.vision_config, depth_key) == 1
    tokenizer = processor.tokenizer
    assert (
        tokenizer.unk_token_id
        not in tokenizer("zyxw QWERTY", add_special_tokens=False)["input_ids"]
    )
    assert text_config.vocab_size == len(tokenizer) == len(tiny_tokenizer(family)) + 2

    inputs = processor(
        images=[_image(4, (64, 64))],
        text=[f"{TINY_IMAGE_PLACEHOLDER[family]} zyxw?"],
        return_tensors="pt",
    )
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == tokens_per_image(family, 64)
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(tokenizer)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chat_template(family: str) -> None:
    model, processor = _tiny(family)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is this?"}]},
        {"role": "assistant", "content": "I don't know."},
        {"role": "user", "content": "Where was he born?"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count(TINY_IMAGE_PLACEHOLDER[family]) == 1
    assert processor.tokenizer.eos_token in prompt

    messages[0]["content"][0]["image"] = _image(5)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.image_token_id).sum()) == tokens_per_image(family)
    assert processor.tokenizer.unk_token_id not in ids.tolist()
    bos = processor.tokenizer.bos_token_id
    assert ids.tolist().count(bos) == (0 if bos is None else 1)  # the template's bos, not two
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == (1, ids.shape[0])


def test_per_sample_images_are_checked() -> None:
    _, processor = _tiny("llava")
    with pytest.raises(ValueError, match="placeholders"):
        processor(images=[None, _image(1)], text=["<image> hi", "<image> hi"], return_tensors="pt")
    text_only = processor(images=[None, []], text=["hi", "who?"], return_tensors="pt", padding=True)
    assert "pixel_values" not in text_only


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match=r"llava.*qwen2_vl.*idefics3"):
        tiny_vlm("blip2")

"""Bad input gets a clear error, and leaves the model in a working state."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from vlm_inputs import batch, image, randomise_encoder, standard_batch

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.families import supported_families
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm


@pytest.fixture(params=TINY_FAMILIES)
def wrapped(request):
    family = request.param
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    return family, model, processor


def test_unsupported_model_names_the_supported_families() -> None:
    text_only = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=32,
        )
    )
    with pytest.raises(ValueError, match="does not support LlamaForCausalLM") as refused:
        get_cagul_model(text_only, CagulConfig())
    assert f"Supported families: {', '.join(supported_families())}." in str(refused.value)
    assert not text_only._forward_pre_hooks and not text_only._forward_hooks


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_model_without_image_token_id_is_refused(family) -> None:
    vlm, _ = tiny_vlm(family)
    # As a config class without the field would have it; set past transformers' validation.
    for name in ("image_token_id", "image_token_index"):
        if hasattr(vlm.config, name):
            object.__setattr__(vlm.config, name, None)
    with pytest.raises(ValueError, match=r"no image_token_id.*Set `model.config.image_token_id`"):
        get_cagul_model(vlm, CagulConfig())
    assert not vlm._forward_pre_hooks and not vlm._forward_hooks


def test_wrapping_twice_is_refused() -> None:
    vlm, _ = tiny_vlm("llava")
    get_cagul_model(vlm, CagulConfig())
    with pytest.raises(ValueError, match=r"already runs CAGUL.s attention"):
        get_cagul_model(vlm, CagulConfig())


def test_attention_layer_beyond_the_model_is_refused() -> None:
    vlm, _ = tiny_vlm("llava")  # 2 decoder layers
    with pytest.raises(ValueError, match=r"attention_layer=5 does not exist.*0\.\.1"):
        get_cagul_model(vlm, CagulConfig(attention_layer=5))


def assert_still_works(model, processor, family) -> None:
    """After a refused call, a good batch behaves exactly as before."""
    inputs = standard_batch(processor, family)
    with torch.no_grad():
        with model.disable_adapter():
            bare = model(**inputs).logits
        assert torch.equal(model(**inputs).logits, bare)
        with model.force_gate(True):
            assert not torch.equal(model(**inputs).logits, bare)


def test_images_without_placeholders_are_refused(wrapped) -> None:
    family, model, processor = wrapped
    inputs = standard_batch(processor, family)
    image_token = model.active_config.image_token_id
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token, 5)
    with pytest.raises(ValueError, match=r"carries 2 image\(s\) but its text holds 0"):
        model(**inputs)
    assert_still_works(model, processor, family)


def test_placeholders_without_images_are_refused(wrapped) -> None:
    family, model, processor = wrapped
    inputs = standard_batch(processor, family)
    text_only = {
        key: inputs[key]
        for key in ("input_ids", "attention_mask", "mm_token_type_ids")
        if key in inputs
    }
    with pytest.raises(ValueError, match=r"hold 2 image placeholder\(s\).*no images"):
        model(**text_only)
    assert_still_works(model, processor, family)


def test_more_images_than_placeholders_is_refused(wrapped) -> None:
    family, model, processor = wrapped
    two = batch(processor, family, [("{image} and {image} who ?", [image(1), image(2)])])
    one = batch(processor, family, [("{image} who is this ?", [image(3)])])
    image_inputs = {k: v for k, v in two.items() if k not in ("input_ids", "attention_mask")}
    image_inputs.pop("mm_token_type_ids", None)
    mixed = {**one, **image_inputs}
    with pytest.raises(ValueError, match=r"carries 2 image\(s\) but its text holds 1"):
        model(**mixed)
    assert_still_works(model, processor, family)


def test_images_with_inputs_embeds_only_are_refused(wrapped) -> None:
    family, model, processor = wrapped
    inputs = standard_batch(processor, family)
    embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    with pytest.raises(ValueError, match="Pass input_ids"):
        model(**inputs, inputs_embeds=embeds)
    assert_still_works(model, processor, family)


def test_image_tokens_unlike_the_vision_tower_s_are_explained(wrapped) -> None:
    """A prompt whose image tokens do not match the image: transformers' check, with the fix."""
    family, model, processor = wrapped
    inputs = standard_batch(processor, family, padding_side="left")
    image_token = model.active_config.image_token_id
    one_short = inputs["input_ids"].clone()
    last = int((one_short[0] == image_token).nonzero()[-1])
    one_short[0, last] = processor.tokenizer.convert_tokens_to_ids("who")
    bad = {**inputs, "input_ids": one_short}
    fix = r"do not match.*Build input_ids and images in one call of this model's own processor"
    with model.force_gate(True):
        with pytest.raises(ValueError, match=fix):
            model(**bad)
        with pytest.raises(ValueError, match=fix):
            model.generate(**bad, max_new_tokens=2)
    assert_still_works(model, processor, family)

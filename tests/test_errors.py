"""Bad input gets a clear error, and leaves the model in a working state."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from vlm_inputs import batch, image, randomise_encoder, standard_batch

from hf_cagul import CagulConfig, get_cagul_model
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
    with pytest.raises(ValueError, match=r"does not support LlamaForCausalLM.*idefics3.*llava"):
        get_cagul_model(text_only, CagulConfig())


def test_model_without_image_token_id_is_refused() -> None:
    vlm, _ = tiny_vlm("llava")
    vlm.config.image_token_id = None
    with pytest.raises(ValueError, match="no image_token_id"):
        get_cagul_model(vlm, CagulConfig())


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

"""Families whose visual information does not only enter through ``inputs_embeds``.

The invariant suites (``test_model.py``...) cover these families too; the tests here prove what
is particular to them: nothing of a flagged image's original tokens reaches the model at the
rewritten positions, whichever way the family feeds them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from vlm_inputs import batch, image, randomise_encoder, standard_batch

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.tiny import tiny_vlm


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@contextmanager
def perturbed_deepstack(vlm: Any, positions: list[tuple[int, int]]) -> Iterator[None]:
    """Add noise to the deepstack features of ``(sample, position)`` before CAGUL sees them."""

    def perturb(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        masks = kwargs["visual_pos_masks"]
        flat_positions = masks.reshape(-1).nonzero().squeeze(1).tolist()
        rows = [flat_positions.index(s * masks.shape[1] + p) for s, p in positions]
        generator = torch.Generator().manual_seed(0)
        noisy = []
        for features in kwargs["deepstack_visual_embeds"]:
            features = features.clone()
            features[rows] += 10 * torch.randn(features[rows].shape, generator=generator)
            noisy.append(features)
        return args, {**kwargs, "deepstack_visual_embeds": noisy}

    handle = vlm.get_decoder().register_forward_pre_hook(perturb, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def test_qwen3_vl_deepstack_features_of_rewritten_tokens_never_reach_the_model() -> None:
    vlm, processor = tiny_vlm("qwen3_vl")
    assert len(vlm.config.vision_config.deepstack_visual_indexes) == 2
    inputs = standard_batch(processor, "qwen3_vl")
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model)
    with model.force_gate(True), model.trace() as traces:
        reference = logits(model, inputs)
    selected = [
        (t.sample, int(p)) for t in traces for p in (t.selected if t.selected is not None else [])
    ]
    kept = [
        (t.sample, p)
        for t in traces
        for p in range(t.start, t.end)
        if (t.sample, p) not in selected
    ]
    assert len(selected) == 8 and len(kept) == 24

    with perturbed_deepstack(vlm, selected):
        with model.force_gate(True):
            assert torch.equal(logits(model, inputs), reference)
        with model.disable_adapter():  # the bare model does read those features
            assert not torch.allclose(logits(model, inputs), bare)
    with perturbed_deepstack(vlm, kept), model.force_gate(True):
        # Only the rewritten positions lose their deepstack features: the others still count.
        assert not torch.allclose(logits(model, inputs), reference)


def cross_attention_states_seen(vlm: Any, model: Any, inputs: dict) -> torch.Tensor:
    """The ``(batch, rows, hidden)`` states Mllama's first cross-attention layer receives."""
    text_config = vlm.config.get_text_config(decoder=True)
    layer = vlm.get_decoder().layers[min(text_config.cross_attention_layers)]
    seen: list[torch.Tensor] = []

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["cross_attention_states"])

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        logits(model, inputs)
    finally:
        handle.remove()
    batch = inputs["input_ids"].shape[0]
    return seen[-1].reshape(batch, -1, seen[-1].shape[-1])


def test_mllama_rewrites_exactly_the_selected_cross_attention_states() -> None:
    vlm, processor = tiny_vlm("mllama")
    inputs = batch(
        processor,
        "mllama",
        [
            ("{image} what is the name of this person ?", [image(1)]),
            ("{image} who is he ? and {image} where was she born ?", [image(2), image(3)]),
        ],
    )
    bare = cross_attention_states_seen(vlm, vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model)
    with model.force_gate(True), model.trace() as traces:
        seen = cross_attention_states_seen(vlm, model, inputs)
    # Each image is its sample's next block of 17 rows: one tile of 16 patches + class token.
    assert [(t.sample, t.start, t.end) for t in traces] == [(0, 0, 17), (1, 0, 17), (1, 17, 34)]
    changed = (seen != bare).any(dim=-1)
    expected = torch.zeros_like(changed)
    adapter = model.active_adapter_module
    for trace in traces:
        assert trace.selected is not None and len(trace.selected) == 4
        expected[trace.sample, trace.selected] = True
        # The model sees, at a selected row, what the encoder makes of it and nothing else.
        rows = bare[trace.sample, trace.start : trace.end]
        context = rows.mean(dim=0, keepdim=True).expand(len(trace.selected), -1)
        with torch.no_grad():
            encoded = adapter.encoder(bare[trace.sample, trace.selected], context)
        torch.testing.assert_close(seen[trace.sample, trace.selected], encoded)
    assert torch.equal(changed, expected)


def test_mllama_scores_at_the_next_cross_attention_layer() -> None:
    vlm, _ = tiny_vlm("mllama", num_hidden_layers=4)
    text_config = vlm.config.get_text_config(decoder=True)
    assert text_config.cross_attention_layers == [1, 3]
    model = get_cagul_model(vlm, CagulConfig(attention_layer=2))
    assert model.family.scoring_layer(text_config, 2) == 3
    assert model.family.scoring_layer(text_config, 1) == 1
    model.unload()
    shallow, _ = tiny_vlm("mllama", num_hidden_layers=3)  # one cross-attention layer: 1
    with pytest.raises(ValueError, match=r"no cross-attention layer.*attention_layer=2.*at most 1"):
        get_cagul_model(shallow, CagulConfig(attention_layer=2))
    assert all(p.requires_grad for p in shallow.parameters())  # refused before any change
    assert not shallow._forward_pre_hooks

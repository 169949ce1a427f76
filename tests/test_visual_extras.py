"""Families whose visual information does not only enter through ``inputs_embeds``.

The invariant suites (``test_model.py``...) cover these families too; the tests here prove what
is particular to them: nothing of a flagged image's original tokens reaches the model at the
rewritten positions, whichever way the family feeds them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from vlm_inputs import randomise_encoder, standard_batch

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

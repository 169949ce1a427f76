"""The core invariants of a CAGUL adapter, on every supported family's real model classes."""

from __future__ import annotations

import pytest
import torch
from vlm_inputs import (
    assert_identical,
    batch,
    image,
    randomise_encoder,
    snapshot,
    standard_batch,
)

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

pytestmark = pytest.mark.parametrize("family", TINY_FAMILIES)


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def image_start(inputs: dict, model: CagulModel, sample: int) -> int:
    positions = (inputs["input_ids"][sample] == model.active_config.image_token_id).nonzero()
    return int(positions[0])


def test_weights_frozen_and_bit_identical_through_the_lifecycle(family, tmp_path) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    before = snapshot(vlm)
    inputs = standard_batch(processor, family)
    model = get_cagul_model(vlm, CagulConfig())
    assert all(not p.requires_grad for p in vlm.parameters())
    assert all(p.requires_grad for p in model.active_adapter_module.parameters())
    randomise_encoder(model)
    with model.force_gate(True):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()  # gradients reach the adapter only
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert all(p.grad is None for p in vlm.parameters())
    assert model.active_adapter_module.encoder.mlp[-1].weight.grad is not None
    model.save_pretrained(tmp_path / "adapter")
    bare = model.unload()
    reloaded = CagulModel.from_pretrained(bare, tmp_path / "adapter")
    with reloaded.force_gate(True):
        reloaded(**inputs)
    assert reloaded.unload() is vlm
    assert all(not p.requires_grad for p in vlm.parameters())
    assert_identical(before, vlm)


def test_closed_gate_gives_bit_identical_logits(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    with model.trace() as traces:
        gated = logits(model, inputs)  # a fresh discriminator flags nothing
    assert torch.equal(gated, bare)
    assert [t.flagged for t in traces] == [False, False]
    with model.force_gate(False):
        assert torch.equal(logits(model, inputs), bare)


def test_flagged_image_changes_only_positions_from_its_tokens_on(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model)
    with model.force_gate(True), model.trace() as traces:
        rewritten = logits(model, inputs)
    for sample in range(2):
        start = image_start(inputs, model, sample)
        assert torch.equal(rewritten[sample, :start], bare[sample, :start])
        assert not torch.allclose(rewritten[sample, start:], bare[sample, start:])
        trace = traces[sample]
        assert trace.flagged and trace.selected is not None and trace.scores is not None
        k = model.active_config.num_selected(trace.end - trace.start)
        assert k == (trace.end - trace.start) // 4  # 25% of the visual tokens (16 in most)
        assert len(trace.selected) == k
        assert ((trace.selected >= trace.start) & (trace.selected < trace.end)).all()
        lowest = torch.topk(trace.scores, k, largest=False).indices + trace.start
        assert set(trace.selected.tolist()) == set(lowest.tolist())


def test_mixed_batch_rewrites_only_flagged_images(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    head = model.active_adapter_module.discriminator.head
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(3))
        head.bias.zero_()
    with model.trace() as traces:
        logits(model, inputs)
    low, high = sorted(t.probability for t in traces)
    assert low < high
    model.active_config.gate_threshold = (low + high) / 2
    flagged = max(range(2), key=lambda i: traces[i].probability)
    with model.trace() as traces:
        mixed = logits(model, inputs)
    assert [t.flagged for t in traces] == [i == flagged for i in range(2)]
    assert torch.equal(mixed[1 - flagged], bare[1 - flagged])
    assert not torch.equal(mixed[flagged], bare[flagged])


def test_disable_adapter_gives_the_bare_model(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    with model.force_gate(True):
        assert not torch.equal(logits(model, inputs), bare)
        with model.disable_adapter():
            assert torch.equal(logits(model, inputs), bare)
        assert not torch.equal(logits(model, inputs), bare)


def test_generate_rewrites_at_prefill_only(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family, padding_side="left")
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    settings |= {"output_logits": True, "return_dict_in_generate": True}
    bare = vlm.generate(**inputs, **settings)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    assert torch.equal(model.generate(**inputs, **settings).sequences, bare.sequences)
    with model.force_gate(True), model.trace() as traces:
        forgotten = model.generate(**inputs, **settings)
    assert len(traces) == 2  # one record per image: decode steps never reach the adapter
    assert forgotten.sequences.shape == bare.sequences.shape
    # The rewrite reaches the first generated token's logits in every sample. (Whether the
    # greedy tokens flip is up to the random model: in tiny PaliGemma they do not.)
    for sample in range(2):
        assert not torch.allclose(forgotten.logits[0][sample], bare.logits[0][sample])


def test_left_and_right_padding_select_the_same_tokens(family) -> None:
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    results = {}
    for side in ("left", "right"):
        inputs = standard_batch(processor, family, padding_side=side)
        with model.force_gate(True), model.trace() as traces:
            out = logits(model, inputs)
        last = inputs["attention_mask"].sum(1) - 1 if side == "right" else torch.tensor([-1, -1])
        results[side] = (
            [sorted((t.selected - t.start).tolist()) for t in traces],
            torch.stack([out[i, last[i]] for i in range(2)]),
            [t.scores for t in traces],
        )
    assert results["left"][0] == results["right"][0]
    assert torch.allclose(results["left"][1], results["right"][1], atol=1e-4)
    for left, right in zip(results["left"][2], results["right"][2], strict=True):
        assert torch.allclose(left, right, atol=1e-5)


def test_samples_without_images_pass_untouched(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = batch(
        processor,
        family,
        [("{image} what is the name of this person ?", [image(1)]), ("where was he born ?", [])],
    )
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    with model.force_gate(True), model.trace() as traces:
        out = logits(model, inputs)
    assert len(traces) == 1 and traces[0].sample == 0
    assert torch.equal(out[1], bare[1])
    assert not torch.equal(out[0], bare[0])


def test_unload_restores_the_bare_model(family) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    bare = logits(vlm, inputs)
    attention = vlm.config.get_text_config(decoder=True)._attn_implementation
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    assert model.config.get_text_config(decoder=True)._attn_implementation != attention
    returned = model.unload()
    assert returned is vlm
    assert vlm.config.get_text_config(decoder=True)._attn_implementation == attention
    assert not vlm._forward_pre_hooks and not vlm._forward_hooks
    assert torch.equal(logits(vlm, inputs), bare)
    with pytest.raises(RuntimeError, match="unloaded"):
        model(**inputs)
    again = get_cagul_model(vlm, CagulConfig())  # a VLM can be wrapped again after unload
    assert torch.equal(logits(again, inputs), bare)


def test_print_trainable_parameters(family, capsys) -> None:
    vlm, _ = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig(encoder_hidden_size=8, discriminator_hidden_size=4))
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in model.active_adapter_module.parameters())
    assert total == trainable + sum(p.numel() for p in vlm.parameters())
    assert f"trainable params: {trainable:,d}" in capsys.readouterr().out


def test_half_precision_vlm_with_float32_adapter(family) -> None:
    vlm, processor = tiny_vlm(family)
    vlm.to(torch.bfloat16)
    inputs = standard_batch(processor, family)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig())
    assert next(model.active_adapter_module.parameters()).dtype == torch.float32
    randomise_encoder(model)
    assert torch.equal(logits(model, inputs), bare)
    with model.force_gate(True):
        rewritten = logits(model, inputs)
    assert rewritten.dtype == torch.bfloat16
    assert not torch.equal(rewritten, bare)


@pytest.mark.parametrize("selection", ["highest", "random"])
def test_token_selection_ablations(family, selection) -> None:
    vlm, processor = tiny_vlm(family)
    inputs = standard_batch(processor, family)
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25, token_selection=selection))
    with torch.no_grad(), model.force_gate(True), model.trace() as first:
        model(**inputs)
    with torch.no_grad(), model.force_gate(True), model.trace() as second:
        model(**inputs)
    k = model.active_config.num_selected(first[0].end - first[0].start)
    for trace, again in zip(first, second, strict=True):
        assert trace.selected is not None and trace.scores is not None
        assert torch.equal(trace.selected, again.selected)  # reproducible, also "random"
        if selection == "highest":
            expected = torch.topk(trace.scores, k).indices + trace.start
            assert set(trace.selected.tolist()) == set(expected.tolist())
    if selection == "random":
        lowest = [
            set((torch.topk(t.scores, k, largest=False).indices + t.start).tolist()) for t in first
        ]
        assert any(set(t.selected.tolist()) != low for t, low in zip(first, lowest, strict=True))

"""`CagulModel.record_frozen_pass`: one pass of the frozen VLM serves the reference logits, the
selection scores and the gate's input, and the adapted pass that reuses them runs no side pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_depth import _adapter, _losses
from test_trainer import training_args
from vlm_inputs import randomise_encoder, snapshot, standard_batch, tiny_dataset

from hf_cagul import CagulConfig, CagulTrainer, get_cagul_model
from hf_cagul.gates import GATES, LANGUAGE_STATE
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

families = pytest.mark.parametrize("family", TINY_FAMILIES)
gates = pytest.mark.parametrize("gate", sorted(GATES))


def _first_layer_calls(model) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    layer = model.family.decoder(model.base_model).layers[0]
    return calls, layer.register_forward_pre_hook(lambda *_: calls.append(1))


@gates
@families
def test_the_reused_pass_gives_the_same_outputs_with_no_side_pass(family, gate) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    inputs = standard_batch(processor, family)
    with torch.no_grad():
        bare = vlm(**inputs).logits
    before = snapshot(vlm)
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig(gate=gate, token_ratio=0.25))
    randomise_encoder(model)
    calls, handle = _first_layer_calls(model)
    try:
        with torch.no_grad(), model.record_frozen_pass() as frozen:
            recorded = model(**inputs).logits
        assert calls == [1]  # the recording is the one bare pass: no side pass
        calls.clear()
        with torch.no_grad(), model.force_gate(True):
            own = model(**inputs)
        side_passes = len(calls) - 1
        calls.clear()
        with torch.no_grad(), model.force_gate(True):
            reused = model(**inputs, frozen_pass=frozen)
        assert calls == [1]
    finally:
        handle.remove()
    assert torch.equal(recorded, bare)  # nothing rewritten while recording
    assert frozen.recorded and len(frozen.scores) == 1
    reads_state = GATES[gate].reads == LANGUAGE_STATE
    assert (frozen.language_state is not None) == reads_state
    # Without the record, one side pass: the truncated attention pass (the paper's gate), or the
    # pass aborted at the gate's layer, which also kept the attention (a state gate).
    assert side_passes == 1
    assert torch.equal(reused.logits, own.logits)
    assert torch.equal(reused.gate_logits, own.gate_logits)
    assert not torch.equal(reused.logits, bare)
    assert all(torch.equal(before[k], v) for k, v in model.unload().state_dict().items())


def test_a_record_of_other_inputs_is_refused_and_the_next_call_works() -> None:
    vlm, processor = tiny_vlm("llava", num_hidden_layers=4)
    inputs = standard_batch(processor, "llava")
    model = get_cagul_model(vlm, CagulConfig(gate="visual_and_language_state"))
    with torch.no_grad(), model.record_frozen_pass() as frozen:
        model(**inputs)
    with torch.no_grad(), model.record_frozen_pass() as empty:
        model(input_ids=torch.full((1, 3), 5))  # text only: nothing to record
    assert not empty.recorded
    other_mask = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    other_mask[:, -1] = True
    with torch.no_grad(), model.force_gate(True):
        for record, extra, reason in (
            (empty, {}, "holds nothing"),
            (frozen, {"query_mask": other_mask}, "query mask differs"),
        ):
            with pytest.raises(ValueError, match=reason):
                model(**inputs, **extra, frozen_pass=record)
        assert torch.equal(model(**inputs, frozen_pass=frozen).logits, model(**inputs).logits)


@pytest.mark.parametrize("gate", ["visual_tokens", "visual_and_language_state"])
@pytest.mark.parametrize("depth_loss", ["npo", "unlikelihood"])
def test_sharing_the_frozen_pass_fits_the_same_adapter_with_fewer_passes(
    tmp_path: Path, gate: str, depth_loss: str
) -> None:
    fits = {}
    for share in (True, False):
        vlm, processor = tiny_vlm("llava")
        torch.manual_seed(0)
        model = get_cagul_model(vlm, CagulConfig(gate=gate))
        trainer = CagulTrainer(
            model=model,
            args=training_args(
                tmp_path / str(share),
                max_steps=3,
                augment_images=True,
                depth_weight=1.0,
                depth_loss=depth_loss,
                share_frozen_pass=share,
            ),
            train_dataset=tiny_dataset(),
            processing_class=processor,
        )
        calls, handle = _first_layer_calls(model)
        try:
            trainer.train()
        finally:
            handle.remove()
        fits[share] = (_losses(trainer), _adapter(model), len(calls))
    (shared_losses, shared, shared_calls), (side_losses, side, side_calls) = fits[True], fits[False]
    assert shared_losses == side_losses
    assert all(torch.equal(shared[name], side[name]) for name in side)
    assert shared_calls < side_calls

"""A gate that reads the frozen language model's state, in flight: both serving guarantees hold."""

from __future__ import annotations

import pytest
import torch
from vlm_inputs import batch, image, image_runs, snapshot, standard_batch, tiny_dataset

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.families import get_family
from hf_cagul.gates import GATES, LANGUAGE_STATE, GateInputs
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

families = pytest.mark.parametrize("family", TINY_FAMILIES)
STATE_GATES = sorted(name for name, gate in GATES.items() if gate.reads == LANGUAGE_STATE)
state_gates = pytest.mark.parametrize("gate", STATE_GATES)


def pair(family: str, **config: object):
    """The same VLM wrapped twice: a language-state gate and the paper's gate, one encoder."""
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    torch.manual_seed(0)
    state = get_cagul_model(vlm, CagulConfig(gate="language_state", **config))
    with torch.no_grad():
        for parameter in state.active_adapter_module.encoder.parameters():
            parameter.normal_(std=0.2)
    encoder = {k: v.clone() for k, v in state.active_adapter_module.encoder.state_dict().items()}
    return processor, state, encoder


@state_gates
@families
def test_closed_state_gate_is_bit_identical_and_costs_no_second_pass(family, gate) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    inputs = standard_batch(processor, family)
    with torch.no_grad():
        bare = vlm(**inputs).logits
        bare_tokens = vlm.generate(**inputs, max_new_tokens=3, do_sample=False)
    before = snapshot(vlm)
    model = get_cagul_model(vlm, CagulConfig(gate=gate))
    assert isinstance(model.active_adapter_module.discriminator, GATES[gate])
    calls = []
    first = model.family.decoder(vlm).layers[0]
    handle = first.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad(), model.trace() as traces:
            adapted = model(**inputs).logits
    finally:
        handle.remove()
    assert torch.equal(adapted, bare)
    assert calls == [1]  # the forward ran once: no truncated pass, no restart
    assert traces and not any(t.flagged for t in traces)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), bare_tokens)
    bare_again = model.unload()
    assert all(torch.equal(before[k], v) for k, v in bare_again.state_dict().items())
    assert "forward" not in vars(model.family.decoder(bare_again))  # the wrapper is gone


@families
def test_a_flagged_image_restarts_the_forward_with_the_rewrite(family) -> None:
    processor, model, encoder = pair(family, token_ratio=0.25)
    inputs = standard_batch(processor, family)
    with torch.no_grad(), model.force_gate(True):
        restarted = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    paper = get_cagul_model(model.unload(), CagulConfig(token_ratio=0.25))
    paper.active_adapter_module.encoder.load_state_dict(encoder)
    with torch.no_grad(), paper.force_gate(True):
        immediate = paper(**inputs).logits
        expected = paper.generate(**inputs, max_new_tokens=3, do_sample=False)
    with torch.no_grad(), paper.disable_adapter():
        bare = paper(**inputs).logits
    assert torch.equal(restarted, immediate)  # the same rewrite, reached by a restart
    assert not torch.allclose(restarted, bare)
    assert torch.equal(generated, expected)  # the aborted pass left nothing in the cache


def bare_layer_output(model, index: int, inputs) -> torch.Tensor:
    """The output of decoder layer ``index`` of the bare VLM on ``inputs``."""
    hidden: list[torch.Tensor] = []
    layer = model.family.decoder(model.base_model).layers[index]
    handle = layer.register_forward_hook(
        lambda m, a, out: hidden.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad(), model.disable_adapter():
            model.base_model(**inputs)
    finally:
        handle.remove()
    return hidden[0]


@families
def test_the_gate_reads_the_state_after_its_layer_at_the_last_prompt_token(family) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    model = get_cagul_model(vlm, CagulConfig(gate="language_state", gate_layer=1))
    inputs = standard_batch(processor, family)
    features = model.gate_inputs(**inputs)
    hidden = bare_layer_output(model, 1, inputs)
    with torch.no_grad(), model.trace() as traces:
        model(**inputs)
    prompt = inputs["attention_mask"].bool() & (inputs["input_ids"] != model._image_token_id)
    last = prompt.long().cumsum(1).argmax(1)
    expected = torch.stack([hidden[t.sample, last[t.sample]] for t in traces])
    assert torch.equal(features.language_state, expected)
    assert features.language_state.shape == (len(traces), vlm.config.get_text_config().hidden_size)


@state_gates
def test_the_trainer_fits_a_state_gate(tmp_path, gate) -> None:
    vlm, processor = tiny_vlm("llava", num_hidden_layers=4)
    model = get_cagul_model(vlm, CagulConfig(gate=gate))
    head = model.active_adapter_module.discriminator.head
    before = head.weight.clone()
    args = CagulTrainingConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    CagulTrainer(
        model=model, args=args, train_dataset=tiny_dataset(), processing_class=processor
    ).train()
    assert not torch.equal(head.weight, before)


def test_the_combined_gate_reads_the_tokens_and_the_state() -> None:
    vlm, processor = tiny_vlm("llava", num_hidden_layers=4)
    model = get_cagul_model(vlm, CagulConfig(gate="visual_and_language_state"))
    gate = model.active_adapter_module.discriminator
    with torch.no_grad():
        for parameter in gate.parameters():
            parameter.normal_(std=0.5)
    features = model.gate_inputs(**standard_batch(processor, "llava"))
    assert features.language_state is not None
    with torch.no_grad():
        logits = gate(features)
        other_state = gate(
            GateInputs(**{**vars(features), "language_state": features.language_state.flip(0)})
        )
        other_tokens = gate(GateInputs(**{**vars(features), "tokens": features.tokens * 2}))
    assert logits.shape == (features.num_images,)
    assert not torch.allclose(logits, other_state)
    assert not torch.allclose(logits, other_tokens)
    with pytest.raises(ValueError, match="language_state"):
        gate(GateInputs(features.tokens, features.image_index, features.num_images))


@families
def test_a_flagged_image_takes_its_scores_from_the_aborted_pass(family) -> None:
    """No truncated pass: the aborted pass kept the scoring layer's attention, and the scores
    are the truncated pass's, so the rewrite is the paper's gate's (same encoder, same scores)."""
    processor, model, encoder = pair(family, token_ratio=0.25)
    inputs = standard_batch(processor, family)
    calls = []
    handle = (
        model.family.decoder(model.base_model)
        .layers[0]
        .register_forward_pre_hook(lambda *_: calls.append(1))
    )
    try:
        with torch.no_grad(), model.force_gate(True), model.trace() as traces:
            model(**inputs)
    finally:
        handle.remove()
    assert calls == [1, 1]  # the aborted pass and the restart, nothing else
    paper = get_cagul_model(model.unload(), CagulConfig(token_ratio=0.25))
    paper.active_adapter_module.encoder.load_state_dict(encoder)
    with torch.no_grad(), paper.force_gate(True), paper.trace() as expected:
        paper(**inputs)
    for got, want in zip(traces, expected, strict=True):
        assert torch.equal(got.scores, want.scores) and torch.equal(got.selected, want.selected)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if get_family(f).expands_image_tokens])
def test_a_gate_can_read_the_mean_state_of_the_image_own_tokens(family) -> None:
    """``gate_state_tokens="visual"``: the mean over each image's visual tokens of its layer's
    output, the same whatever question follows the image under causal attention; ``"both"``:
    the last prompt token's state beside it, read by gates twice as wide."""
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    bare_inputs = batch(
        processor,
        family,
        [
            ("{image} what is the name of this person ?", [image(1)]),
            ("{image} where was he born ?", [image(1)]),
        ],
    )
    with torch.no_grad():
        bare = vlm(**bare_inputs).logits
    before = snapshot(vlm)
    model = get_cagul_model(
        vlm, CagulConfig(gate="language_state", gate_layer=2, gate_state_tokens="visual")
    )
    features = model.gate_inputs(**bare_inputs)
    hidden = bare_layer_output(model, 2, bare_inputs)
    runs = image_runs(bare_inputs, model._image_token_id)
    expected = torch.stack([hidden[s, start:end].mean(0) for s, start, end in runs])
    assert torch.allclose(features.language_state, expected, atol=1e-6)
    same = torch.allclose(features.language_state[0], features.language_state[1], atol=1e-5)
    # PaliGemma's prompt is a prefix that attends both ways: the question reaches the image.
    assert same == (family != "paligemma")
    with torch.no_grad():  # a closed gate: the bare model's logits
        assert torch.equal(model(**bare_inputs).logits, bare)
    prompt = bare_inputs["attention_mask"].bool() & (
        bare_inputs["input_ids"] != model._image_token_id
    )
    last = hidden[torch.arange(2), prompt.long().cumsum(1).argmax(1)]
    for gate in STATE_GATES:
        config = CagulConfig(gate=gate, gate_layer=2, gate_state_tokens="both")
        model.add_adapter("both", config)
        model.set_adapter("both")
        both = model.gate_inputs(**bare_inputs).language_state
        assert model.gate_probabilities(**bare_inputs).probabilities.shape == (1, 2)
        model.set_adapter("default")
        model.delete_adapter("both")
        hidden_size = expected.shape[-1]
        assert both.shape == (2, 2 * hidden_size)
        assert torch.equal(both[:, :hidden_size], last)
        assert torch.allclose(both[:, hidden_size:], expected, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(model(**bare_inputs).logits, bare)
    assert all(torch.equal(before[k], v) for k, v in model.unload().state_dict().items())


def test_cross_attention_families_refuse_the_visual_state() -> None:
    vlm, _ = tiny_vlm("mllama", num_hidden_layers=4)
    with pytest.raises(ValueError, match="gate_state_tokens='last_prompt'"):
        get_cagul_model(vlm, CagulConfig(gate="language_state", gate_state_tokens="visual"))
    with pytest.raises(ValueError, match="gate_state_tokens='nearest' is not supported"):
        CagulConfig(gate_state_tokens="nearest")  # type: ignore[arg-type]

"""A batch in which some images are flagged: the truncated attention pass runs on the rows that
hold a flagged image only, and gives what a pass over the whole batch gives; a gate that reads
the language model's state reruns the flagged rows alone instead of restarting the batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vlm_inputs import batch, decoder_inputs, image, randomise_encoder, snapshot

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.families import VLMFamily
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

QUESTIONS = ("what is the name of this person ?", "where was he born ?", "who is this ?")


def _one_flagged(family: str, **config: object):
    """A tiny VLM with a random gate (the paper's unless ``config`` says) whose threshold flags
    exactly one of three images, its inputs, and the bare logits."""
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    inputs = batch(
        processor, family, [("{image} " + q, [image(i)]) for i, q in enumerate(QUESTIONS)]
    )
    with torch.no_grad():
        bare = vlm(**inputs).logits
    torch.manual_seed(0)
    model = get_cagul_model(
        vlm, CagulConfig(**{"gate": "visual_tokens", "token_ratio": 0.25, **config})
    )
    randomise_encoder(model)
    head = model.active_adapter_module.discriminator.head
    with torch.no_grad():
        head.weight.copy_(
            torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1))
        )
        probabilities = model.gate_probabilities(**inputs).probabilities[0]
    ranked = probabilities.sort().values
    assert ranked[1] < ranked[2], "the three images need distinct gate probabilities"
    threshold = float((ranked[1] + ranked[2]) / 2)
    model.cagul_config["default"] = dataclasses.replace(
        model.active_config, gate_threshold=threshold
    )
    return model, inputs, bare, int(probabilities.argmax())


def _run(model, inputs):
    with torch.no_grad(), decoder_inputs(model) as records, model.trace() as traces:
        logits = model(**inputs).logits
    return logits, records, traces


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_truncated_pass_runs_on_the_flagged_row_only(family, monkeypatch) -> None:
    model, inputs, bare, flagged = _one_flagged(family)
    before = snapshot(model.base_model)
    logits, records, traces = _run(model, inputs)
    assert [trace.flagged for trace in traces] == [i == flagged for i in range(3)]
    argument = "inputs_embeds" if model.family.expands_image_tokens else "cross_attention_states"
    assert len(records) == 2  # the truncated pass, then the real one
    assert records[0][argument].shape[0] == records[1][argument].shape[0] // 3
    # Rows without a flagged image are the bare model's, bit for bit.
    for row in range(3):
        if row != flagged:
            assert torch.equal(logits[row], bare[row])
    assert not torch.equal(logits[flagged], bare[flagged])

    # The same call with the side pass over the whole batch, as families that cannot cut do.
    monkeypatch.setattr(type(model.family), "side_pass_rows", lambda self, *_: None)
    whole, records, reference = _run(model, inputs)
    assert records[0][argument].shape[0] == records[1][argument].shape[0]
    mine, theirs = traces[flagged], reference[flagged]
    assert torch.allclose(mine.scores, theirs.scores, atol=1e-6)
    assert torch.equal(mine.selected, theirs.selected)
    assert torch.equal(logits, whole)
    assert all(torch.equal(before[k], v) for k, v in model.unload().state_dict().items())


def _layer_batches(model, run):
    """What ``run()`` returns, and the batch size of every pass through the first decoder layer."""
    sizes: list[int] = []
    layer = model.family.decoder(model.base_model).layers[0]
    handle = layer.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(
            (args[0] if args else kwargs["hidden_states"]).shape[0]
        ),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            return run(), sizes
    finally:
        handle.remove()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_state_gate_reruns_the_flagged_row_alone(family, monkeypatch) -> None:
    model, inputs, bare, flagged = _one_flagged(family, gate="language_state")
    before = snapshot(model.base_model)
    with torch.no_grad(), model.disable_adapter():
        bare_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with model.trace() as traces:
        logits, passes = _layer_batches(model, lambda: model(**inputs).logits)
    assert passes == [3, 1]  # the pass went on, then the flagged row ran again on its own
    # Its scores, computed for its row alone, are those of a call that flags every row.
    with model.force_gate(True), model.trace() as every:
        _layer_batches(model, lambda: model(**inputs))
    assert torch.allclose(traces[flagged].scores, every[flagged].scores, atol=1e-6)
    assert torch.equal(traces[flagged].selected, every[flagged].selected)
    for row in range(3):
        if row != flagged:
            assert torch.equal(logits[row], bare[row])
    assert not torch.allclose(logits[flagged], bare[flagged])
    tokens, _ = _layer_batches(
        model, lambda: model.generate(**inputs, max_new_tokens=4, do_sample=False)
    )

    # The same calls restarting the whole batch, as families that cannot cut do.
    monkeypatch.setattr(type(model.family), "side_pass_rows", lambda self, *_: None)
    whole, passes = _layer_batches(model, lambda: model(**inputs).logits)
    assert passes == [3, 3]
    assert torch.allclose(logits, whole, atol=1e-5)
    restarted, _ = _layer_batches(
        model, lambda: model.generate(**inputs, max_new_tokens=4, do_sample=False)
    )
    # The spliced cache holds the rerun row's keys: decoding goes on as after a restart.
    assert torch.equal(tokens, restarted)
    unflagged = [row for row in range(3) if row != flagged]
    assert torch.equal(tokens[unflagged], bare_tokens[unflagged])
    assert all(torch.equal(before[k], v) for k, v in model.unload().state_dict().items())


def test_a_rerun_costs_less_than_a_restart_or_the_batch_restarts() -> None:
    """At an early gate layer a restart repeats little, so it beats a rerun of the whole pass."""
    model, inputs, bare, flagged = _one_flagged("llava", gate="language_state", gate_layer=0)
    logits, passes = _layer_batches(model, lambda: model(**inputs).logits)
    # The aborted pass, the truncated scoring pass on the flagged row (the scoring layer lies
    # past the gate's), then the restart of the whole batch.
    assert passes == [3, 1, 3]
    assert all(torch.equal(logits[row], bare[row]) for row in range(3) if row != flagged)


def test_a_pass_that_fails_after_asking_for_a_rerun_leaves_none_behind() -> None:
    model, inputs, bare, _ = _one_flagged("llava", gate="language_state")
    norm = model.family.decoder(model.base_model).norm  # runs after the gate's (last) layer

    def fail(*_: object) -> None:
        raise RuntimeError("a failure after the gate's layer")

    handle = norm.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="after the gate"), torch.no_grad():
        model(**inputs)
    handle.remove()
    with torch.no_grad(), model.force_gate(False):
        assert torch.equal(model(**inputs).logits, bare)


def test_a_cache_with_keys_keeps_the_whole_batch() -> None:
    family = VLMFamily("llava", ("llava",))
    cache = type("Cache", (), {"get_seq_length": lambda self: 3})()
    rows = torch.tensor([1])
    assert (
        family.side_pass_rows({"inputs_embeds": torch.zeros(2, 4, 8), "cache": cache}, rows, 2)
        is None
    )
    kept = family.side_pass_rows(
        {
            "inputs_embeds": torch.arange(16.0).reshape(2, 8),
            "position_ids": torch.arange(24).reshape(3, 2, 4),
            "attention_mask": {"full": torch.ones(2, 1, 4, 4), "shared": torch.ones(1, 1, 4, 4)},
            "cache_position": torch.arange(4),
            "use_cache": False,
        },
        rows,
        2,
    )
    assert kept is not None
    assert torch.equal(kept["inputs_embeds"], torch.arange(8.0, 16.0).reshape(1, 8))
    assert torch.equal(kept["position_ids"], torch.arange(24).reshape(3, 2, 4)[:, 1:])
    assert kept["attention_mask"]["full"].shape == (1, 1, 4, 4)
    assert kept["attention_mask"]["shared"].shape == (1, 1, 4, 4)
    assert torch.equal(kept["cache_position"], torch.arange(4)) and kept["use_cache"] is False
    # An argument of another shape (a list, a tensor of another first axis) is not cut blindly.
    assert family.side_pass_rows({"extra": [torch.zeros(2)]}, rows, 2) is None
    assert family.side_pass_rows({"extra": torch.zeros(5, 2)}, rows, 2) is None

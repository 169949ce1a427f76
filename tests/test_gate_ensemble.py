"""A gate of several copies of one design (`CagulConfig.gate_members`), averaged."""

from __future__ import annotations

import json

import pytest
import torch
from run_settings import trainer_arguments
from safetensors import safe_open
from test_gate_fit import gate_scores, people_dataset, strangers
from vlm_inputs import snapshot, standard_batch

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.gates import (
    VISUAL_AND_LANGUAGE,
    GateEnsemble,
    GateInputs,
    LanguageStateGate,
    build_gate,
)
from hf_cagul.tiny import tiny_vlm


def bound(**fields: object) -> CagulConfig:
    """A config as binding leaves it (sizes filled in), without a model."""
    return CagulConfig(hidden_size=16, num_hidden_layers=2, discriminator_hidden_size=8, **fields)


def test_build_gate_gives_the_design_alone_or_an_ensemble_of_it() -> None:
    assert type(build_gate(bound(gate="language_state"))) is LanguageStateGate
    ensemble = build_gate(bound(gate="language_state", gate_members=3))
    assert isinstance(ensemble, GateEnsemble) and len(ensemble.members) == 3
    assert all(type(member) is LanguageStateGate for member in ensemble.members)
    assert ensemble.reads == LanguageStateGate.reads
    names = set(ensemble.state_dict())
    assert {"members.0.head.bias", "members.2.mlp.0.weight"} <= names


def test_the_ensemble_probability_is_the_members_mean_even_where_they_saturate() -> None:
    torch.manual_seed(0)
    ensemble = build_gate(bound(gate="language_state", gate_members=3))
    inputs = GateInputs(
        tokens=torch.zeros(0, 16),
        image_index=torch.zeros(0, dtype=torch.long),
        num_images=5,
        language_state=torch.randn(5, 16),
    )
    with torch.no_grad():
        for member in ensemble.members:
            member.head.weight.normal_(std=5.0)
        members = torch.stack([member(inputs) for member in ensemble.members])
        mean = torch.sigmoid(members).mean(0)
        assert torch.allclose(torch.sigmoid(ensemble(inputs)), mean, atol=1e-6)
        # Members saturated each way: the mean is 2/3, not what a mean of logits would give.
        for member, bias in zip(ensemble.members, (60.0, 60.0, -60.0), strict=True):
            member.head.weight.zero_()
            member.head.bias.fill_(bias)
        logits = ensemble(inputs)
    assert torch.isfinite(logits).all()
    assert torch.allclose(torch.sigmoid(logits), torch.full((5,), 2 / 3), atol=1e-6)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_a_closed_ensemble_is_bit_identical_and_leaves_the_weights_alone(family) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    inputs = standard_batch(processor, family)
    with torch.no_grad():
        bare = vlm(**inputs).logits
    before = snapshot(vlm)
    model = get_cagul_model(vlm, CagulConfig(gate=VISUAL_AND_LANGUAGE, gate_members=3))
    with torch.no_grad(), model.trace() as traces:
        adapted = model(**inputs).logits
    assert torch.equal(adapted, bare)
    assert traces and not any(trace.flagged for trace in traces)
    bare_again = model.unload()
    assert all(torch.equal(before[k], v) for k, v in bare_again.state_dict().items())


def test_the_trainer_fits_each_member_apart_and_the_ensemble_round_trips(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    before = snapshot(vlm)
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig(gate="language_state", gate_members=3))
    arguments = trainer_arguments(
        tmp_path,
        max_steps=1,
        gate_fit="apart",
        gate_epochs=40,
        gate_variants=1,
        gate_learning_rate=1e-2,
        gate_target_fpr=0.1,
        gate_calibration_fraction=0.5,
    )
    trainer = CagulTrainer(
        model=model,
        args=CagulTrainingConfig(**arguments),
        train_dataset=people_dataset(),
        processing_class=processor,
        gate_negatives=strangers(),
    )
    trainer.train()
    report = trainer.gate_fit_report
    assert report is not None and report.calibration is not None
    ensemble = model.active_adapter_module.discriminator
    assert isinstance(ensemble, GateEnsemble)
    heads = [member.head.weight.detach() for member in ensemble.members]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    # The threshold is the ensemble's: the held-out negatives meet the target through it.
    threshold = model.active_config.gate_threshold
    scores = gate_scores(model, processor, [photo.image for photo in report.heldout_negatives])
    assert sum(score > threshold for score in scores) / len(scores) == report.calibration["fpr"]

    trainer.save_model(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["gate_members"] == 3
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "- gate: `language_state`, an ensemble of 3" in card
    with safe_open(str(tmp_path / "adapter" / WEIGHTS_NAME), "pt") as weights:
        assert "discriminator.members.2.head.weight" in set(weights.keys())
    loaded = CagulModel.from_pretrained(model.unload(), tmp_path / "adapter")
    assert gate_scores(loaded, processor, [p.image for p in report.heldout_negatives]) == scores
    assert all(torch.equal(before[k], v) for k, v in loaded.unload().state_dict().items())


@pytest.mark.parametrize("members", [0, 17])
def test_a_member_count_out_of_bounds_is_refused(members) -> None:
    with pytest.raises(ValueError, match=f"gate_members={members} must lie in 1..16"):
        CagulConfig(gate_members=members)

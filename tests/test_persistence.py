"""Saving and loading adapters: safetensors only, atomic writes, checks against the model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from vlm_inputs import randomise_encoder, standard_batch

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.evaluation.attacks import card_evaluation
from hf_cagul.tiny import tiny_vlm


def flagged_logits(model: CagulModel, inputs: dict) -> torch.Tensor:
    with torch.no_grad(), model.force_gate(True):
        return model(**inputs).logits


def test_round_trip_reproduces_outputs(saved_adapter) -> None:
    model, processor, directory = saved_adapter
    assert sorted(os.listdir(directory)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md"])
    inputs = standard_batch(processor, "llava")
    expected = flagged_logits(model, inputs)
    vlm = model.unload()
    loaded = CagulModel.from_pretrained(vlm, directory)
    assert loaded.active_config == model.active_config
    assert torch.equal(flagged_logits(loaded, inputs), expected)
    assert not any(p.requires_grad for p in loaded.active_adapter_module.parameters())
    trainable = CagulModel.from_pretrained(loaded.unload(), directory, is_trainable=True)
    assert all(p.requires_grad for p in trainable.active_adapter_module.parameters())


def test_saved_files_are_safetensors_and_json(saved_adapter) -> None:
    model, _, directory = saved_adapter
    tensors = load_file(directory / WEIGHTS_NAME)
    assert set(tensors) == set(model.active_adapter_module.state_dict())
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert config["family"] == "llava" and config["hidden_size"] == 64
    card = (directory / "README.md").read_text()
    assert "library_name: hf_cagul" in card and "CagulModel.from_pretrained" in card
    assert "## Limits" in card and "--adapter path/to/this-adapter" in card
    assert "--attacks" in card


def test_the_card_shows_the_measured_evasion_rates(tmp_path) -> None:
    model = get_cagul_model(tiny_vlm("llava")[0], CagulConfig())
    attacks = {
        "rows": {
            "none": {"evasion_rate": 0.0},
            "white-box 4/255": {"evasion_rate": 0.75},
            "black-box 200 queries (answer)": {"evasion_rate": float("nan")},
        }
    }
    evaluation = card_evaluation(attacks)
    assert evaluation == {"gate evasion rate, white-box 4/255": 0.75}  # NaN: none flagged
    model.save_pretrained(tmp_path, evaluation=evaluation)
    assert "| gate evasion rate, white-box 4/255 | 0.75 |" in (tmp_path / "README.md").read_text()


def test_failed_save_leaves_the_old_adapter_intact(saved_adapter, monkeypatch) -> None:
    model, processor, directory = saved_adapter
    inputs = standard_batch(processor, "llava")
    expected = flagged_logits(model, inputs)
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    randomise_encoder(model, seed=2)

    def crash_midway(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 10)  # a partial file, then the process "dies"
        raise OSError("No space left on device")

    monkeypatch.setattr("hf_cagul.persistence.save_file", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(directory)
    after = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    assert after == before
    leftovers = [p for p in directory.parent.iterdir() if p.name.startswith(".adapter.tmp")]
    assert leftovers == []
    reloaded = CagulModel.from_pretrained(model.unload(), directory)
    assert torch.equal(flagged_logits(reloaded, inputs), expected)


def test_saving_over_an_adapter_replaces_it_and_keeps_other_files(saved_adapter) -> None:
    model, processor, directory = saved_adapter
    (directory / "trainer_state.json").write_text("{}")
    randomise_encoder(model, seed=5)
    model.save_pretrained(directory)
    inputs = standard_batch(processor, "llava")
    expected = flagged_logits(model, inputs)
    reloaded = CagulModel.from_pretrained(model.unload(), directory)
    assert torch.equal(flagged_logits(reloaded, inputs), expected)
    assert (directory / "trainer_state.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_are_refused(saved_adapter, damage) -> None:
    model, _, directory = saved_adapter
    path = directory / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"x" * 64, "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match="corrupt or truncated"):
        CagulModel.from_pretrained(model.unload(), directory)


def test_weights_that_do_not_match_the_config_are_refused(saved_adapter) -> None:
    model, _, directory = saved_adapter
    tensors = load_file(directory / WEIGHTS_NAME)
    tensors.pop(next(iter(tensors)))
    save_file(tensors, directory / WEIGHTS_NAME)
    vlm = model.unload()
    with pytest.raises(ValueError, match="does not match its config"):
        CagulModel.from_pretrained(vlm, directory)
    assert not vlm._forward_pre_hooks  # the failed load left no hooks behind


def test_pickles_are_refused(saved_adapter, tmp_path) -> None:
    model, _, _ = saved_adapter
    vlm = model.unload()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(model.active_adapter_module.state_dict(), pickled / "adapter_model.bin")
    CagulConfig.from_json_file(tmp_path / "adapter" / CONFIG_NAME).save(pickled)
    with pytest.raises(ValueError, match="never unpickles"):
        CagulModel.from_pretrained(vlm, pickled)
    with pytest.raises(ValueError, match="pickle file"):
        CagulModel.from_pretrained(vlm, pickled / "adapter_model.bin")


def test_missing_files_are_named(saved_adapter) -> None:
    model, _, directory = saved_adapter
    (directory / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        CagulModel.from_pretrained(model.unload(), directory)


def test_config_with_an_invalid_field_is_refused(saved_adapter) -> None:
    model, _, directory = saved_adapter
    data = json.loads((directory / CONFIG_NAME).read_text()) | {"gate_threshold": 2.0}
    (directory / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="gate_threshold"):
        CagulModel.from_pretrained(model.unload(), directory)


def test_adapter_for_another_hidden_size_is_refused(saved_adapter) -> None:
    _, _, directory = saved_adapter
    wider, _ = tiny_vlm("llava", hidden_size=96)
    with pytest.raises(ValueError, match=r"hidden_size: adapter 64, this model 96"):
        CagulModel.from_pretrained(wider, directory)
    assert not wider._forward_pre_hooks


def test_adapter_for_another_family_is_refused(saved_adapter) -> None:
    _, _, directory = saved_adapter
    qwen, _ = tiny_vlm("qwen2_vl")
    with pytest.raises(ValueError, match=r"family: adapter 'llava', this model 'qwen2_vl'"):
        CagulModel.from_pretrained(qwen, directory)

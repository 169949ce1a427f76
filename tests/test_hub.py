"""push_to_hub / from_pretrained through the real huggingface_hub client and a local Hub."""

from __future__ import annotations

import pytest
import torch
from hub_server import set_hf_offline
from vlm_inputs import randomise_encoder, standard_batch

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.tiny import tiny_vlm

REPO = "test-user/forget-adapter"


def flagged_logits(model: CagulModel, inputs: dict) -> torch.Tensor:
    with torch.no_grad(), model.force_gate(True):
        return model(**inputs).logits


@pytest.fixture
def adapter():
    vlm, processor = tiny_vlm("llava")
    vlm.config._name_or_path = "test-user/tiny-llava"
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model, seed=1)
    return model, standard_batch(processor, "llava")


def test_push_then_load_from_the_hub(fake_hub, adapter) -> None:
    model, inputs = adapter
    url = model.push_to_hub(REPO, evaluation={"forget keyword accuracy": 0.02})
    assert REPO in url
    stored = fake_hub.files(REPO)
    assert {CONFIG_NAME, WEIGHTS_NAME, "README.md"} <= set(stored)
    card = stored["README.md"].decode()
    for expected in (
        "library_name: hf_cagul",
        "base_model: test-user/tiny-llava",
        "- unlearning",
        "- cagul",
        f'CagulModel.from_pretrained(vlm, "{REPO}")',
        "| forget keyword accuracy | 0.02 |",
    ):
        assert expected in card, expected
    expected_logits = flagged_logits(model, inputs)
    loaded = CagulModel.from_pretrained(model.unload(), REPO)
    assert torch.equal(flagged_logits(loaded, inputs), expected_logits)


def test_revision_selects_an_older_adapter(fake_hub, adapter) -> None:
    model, inputs = adapter
    model.push_to_hub(REPO, commit_message="first")
    first_commit = fake_hub.commits(REPO)[-1]
    first_logits = flagged_logits(model, inputs)
    randomise_encoder(model, seed=7)
    model.push_to_hub(REPO, commit_message="second")
    second_logits = flagged_logits(model, inputs)
    vlm = model.unload()
    old = CagulModel.from_pretrained(vlm, REPO, revision=first_commit)
    assert torch.equal(flagged_logits(old, inputs), first_logits)
    new = CagulModel.from_pretrained(old.unload(), REPO)
    assert torch.equal(flagged_logits(new, inputs), second_logits)
    with pytest.raises(OSError, match="no revision 'nope'"):
        CagulModel.from_pretrained(new.unload(), REPO, revision="nope")


def test_private_repo_needs_a_token(fake_hub, adapter) -> None:
    model, _ = adapter
    model.push_to_hub(REPO, private=True, token=fake_hub.token)
    vlm = model.unload()
    with pytest.raises(OSError, match="No adapter repo"):
        CagulModel.from_pretrained(vlm, REPO, token=False)
    CagulModel.from_pretrained(vlm, REPO, token=fake_hub.token).unload()


def test_missing_repo_and_non_adapter_repo(fake_hub, adapter) -> None:
    model, _ = adapter
    vlm = model.unload()
    with pytest.raises(OSError, match="No adapter repo 'test-user/nothing-here'"):
        CagulModel.from_pretrained(vlm, "test-user/nothing-here")
    fake_hub.seed("test-user/pickled", {"adapter_model.bin": b"\x80\x04", CONFIG_NAME: b"{}"})
    with pytest.raises(OSError, match="is not a CAGUL adapter"):
        CagulModel.from_pretrained(vlm, "test-user/pickled")


def test_invalid_ids_are_refused(fake_hub, adapter) -> None:
    model, _ = adapter
    with pytest.raises(ValueError, match="neither a local adapter directory nor a valid"):
        CagulModel.from_pretrained(model.unload(), "not a/valid//id")


def test_offline_mode(fake_hub, adapter, monkeypatch) -> None:
    model, _ = adapter
    model.push_to_hub(REPO)
    vlm = model.unload()
    CagulModel.from_pretrained(vlm, REPO).unload()  # now in the local cache
    set_hf_offline(monkeypatch)
    requests_before = len(fake_hub.requests)
    cached = CagulModel.from_pretrained(vlm, REPO)
    assert len(fake_hub.requests) == requests_before
    cached.unload()
    with pytest.raises(OSError, match="offline mode is on"):
        CagulModel.from_pretrained(vlm, "test-user/never-downloaded")

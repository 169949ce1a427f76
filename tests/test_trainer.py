"""CagulTrainer: the real transformers Trainer fitting only the adapter."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset
from run_settings import trainer_arguments
from transformers import TrainerCallback
from vlm_inputs import assert_identical, image, snapshot, tiny_dataset

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.families import get_family
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

TRAINER_STATE_FILES = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "cagul_training_args.json",
}


def training_args(tmp_path, **overrides) -> CagulTrainingConfig:
    return CagulTrainingConfig(**trainer_arguments(tmp_path, **overrides))


def make_trainer(tmp_path, family="llava", **overrides) -> tuple[CagulTrainer, CagulModel]:
    vlm, processor = tiny_vlm(family)
    torch.manual_seed(0)  # the adapter's initial weights
    model = get_cagul_model(vlm, CagulConfig())
    trainer = CagulTrainer(
        model=model,
        args=training_args(tmp_path, **overrides),
        train_dataset=tiny_dataset(),
        processing_class=processor,
    )
    return trainer, model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_training_fits_the_adapter_and_leaves_the_vlm_untouched(tmp_path, family) -> None:
    trainer, model = make_trainer(tmp_path, family)
    vlm_before = snapshot(model.base_model)
    adapter_before = snapshot(model.active_adapter_module)
    before_gate, before_forget = whole_dataset_losses(trainer, model)
    optimized = {
        id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]
    }
    assert optimized == {id(p) for p in model.active_adapter_module.parameters()}
    trainer.train()
    assert_identical(vlm_before, model.base_model)
    assert all(not p.requires_grad for p in model.base_model.parameters())
    after = model.active_adapter_module.state_dict()
    assert any(not torch.equal(adapter_before[k], after[k]) for k in adapter_before)
    logged = [entry for entry in trainer.state.log_history if "forget_loss" in entry]
    assert len(logged) == 4
    for entry in logged:
        assert {"loss", "forget_loss", "retain_kl", "discriminator_loss"} <= set(entry)
    # The encoder starts as the identity, so the adapted and base logits agree at step one:
    # proof that the retain term compares against the same, unmodified model. Not where a
    # rewrite also drops visual inputs the encoder does not give back (Qwen3-VL's deepstack).
    if get_family(family).identity_when_fresh:
        assert logged[0]["retain_kl"] < 1e-6
    else:
        assert 0 < logged[0]["retain_kl"] < logged[-1]["forget_loss"]
    after_gate, after_forget = whole_dataset_losses(trainer, model)
    assert after_gate < before_gate
    assert after_forget < before_forget


def whole_dataset_losses(trainer: CagulTrainer, model: CagulModel) -> tuple[float, float]:
    """Gate BCE and forced-gate forget CE over the whole training set, in one batch."""
    batch = trainer.data_collator(list(trainer.train_dataset))
    forget = batch.pop("forget")
    labels = batch.pop("labels")
    query_mask = batch.pop("query_mask")
    with torch.no_grad(), model.trace() as traces, model.force_gate(True):
        logits = model(**batch, query_mask=query_mask).logits
    gate = torch.stack([trace.logit for trace in traces])
    gate_loss = torch.nn.functional.binary_cross_entropy_with_logits(gate, forget.float())
    rows = forget.unsqueeze(1) & (labels[:, 1:] != -100)
    forget_loss = torch.nn.functional.cross_entropy(logits[:, :-1][rows], labels[:, 1:][rows])
    return float(gate_loss), float(forget_loss)


def test_checkpoints_hold_the_adapter_only(tmp_path) -> None:
    trainer, model = make_trainer(tmp_path, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {CONFIG_NAME, WEIGHTS_NAME} <= files
    assert files - TRAINER_STATE_FILES == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    vlm_bytes = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
    assert (checkpoint / WEIGHTS_NAME).stat().st_size < vlm_bytes / 2
    trainer.save_model(str(tmp_path / "final"))
    loaded = CagulModel.from_pretrained(model.unload(), tmp_path / "final")
    expected = model.active_adapter_module.state_dict()
    for name, tensor in loaded.active_adapter_module.state_dict().items():
        assert torch.equal(tensor, expected[name])


class Crash(TrainerCallback):
    """Kills the run (an exception) at the end of step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("killed")


def test_resume_after_a_kill_reaches_the_same_adapter(tmp_path) -> None:
    settings = {"max_steps": 6, "per_device_train_batch_size": 2, "save_strategy": "steps"}
    settings["save_steps"] = 3
    reference, reference_model = make_trainer(tmp_path / "a", **settings)
    reference.train()

    killed, _ = make_trainer(tmp_path / "b", **settings)
    killed.add_callback(Crash(at=4))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed, resumed_model = make_trainer(tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    expected = reference_model.active_adapter_module.state_dict()
    for name, tensor in resumed_model.active_adapter_module.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0)


def test_gradient_checkpointing_and_bf16(tmp_path) -> None:
    trainer, model = make_trainer(tmp_path, gradient_checkpointing=True, bf16=True, max_steps=2)
    vlm_before = snapshot(model.base_model)
    adapter_before = snapshot(model.active_adapter_module)
    trainer.train()
    assert_identical(vlm_before, model.base_model)
    after = model.active_adapter_module.state_dict()
    assert any(not torch.equal(adapter_before[k], after[k]) for k in adapter_before)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_image_columns_survive_remove_unused_columns(tmp_path) -> None:
    trainer, _ = make_trainer(tmp_path, remove_unused_columns=True, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: {**rows, "split": ["retain"] * len(rows["split"])}, "forget"),
        (lambda rows: {**rows, "split": ["forget"] * len(rows["split"])}, "retain"),
        (lambda rows: {**rows, "image": ["/nonexistent/face.png"] * len(rows["image"])}, "image"),
    ],
)
def test_bad_datasets_fail_before_training(tmp_path, mutate, message) -> None:
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig())
    rows = tiny_dataset().to_dict()
    rows["image"] = [image(i) for i in range(len(rows["split"]))]
    with pytest.raises(ValueError, match=message):
        CagulTrainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=Dataset.from_dict(mutate(rows)),
            processing_class=processor,
        )


def test_trainer_refuses_what_it_cannot_fit(tmp_path, monkeypatch) -> None:
    vlm, processor = tiny_vlm("llava")
    with pytest.raises(TypeError, match="get_cagul_model"):
        CagulTrainer(model=vlm, args=training_args(tmp_path), processing_class=processor)
    model = get_cagul_model(vlm, CagulConfig())
    model.active_adapter_module.requires_grad_(False)
    with pytest.raises(ValueError, match="is_trainable=True"):
        CagulTrainer(model=model, args=training_args(tmp_path), processing_class=processor)
    with pytest.raises(ValueError, match="loss weights are 0"):
        training_args(tmp_path, forget_weight=0, retain_weight=0, discriminator_weight=0)

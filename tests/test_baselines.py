"""Fine-tuning baselines: the real Trainer, real PEFT LoRA, on a tiny LLaVA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from run_settings import trainer_arguments
from vlm_inputs import assert_identical, snapshot, tiny_dataset

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.baselines import (
    BASELINES,
    GATrainer,
    GDTrainer,
    IdkPOTrainer,
    KLTrainer,
    NPOTrainer,
    UnlearningTrainingConfig,
    get_baseline_trainer,
    language_model_projections,
    prepare_model,
)
from hf_cagul.data import UnlearningDataCollator
from hf_cagul.losses import answer_log_probs, mean_answer_nll
from hf_cagul.tiny import tiny_vlm
from hf_cagul.trainer import ForgetRetainTrainer


def config(tmp_path, **overrides) -> UnlearningTrainingConfig:
    # One batch holds the whole tiny dataset: every step sees forget and retain rows.
    values = {
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "balance_splits": False,
        "learning_rate": 5e-3,
        **overrides,
    }
    return UnlearningTrainingConfig(**trainer_arguments(tmp_path, **values))


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that is not a LoRA weight."""
    return {k: v for k, v in snapshot(model).items() if "lora_" not in k}


def assert_base_identical(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    after = base_weights(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def forget_gap(model: torch.nn.Module, collator: UnlearningDataCollator, rows) -> float:
    """Mean answer NLL of the forget rows minus that of the retain rows."""
    batch = collator(list(rows))
    forget, labels = batch.pop("forget"), batch.pop("labels")
    with torch.no_grad():
        nll = mean_answer_nll(model(**batch).logits, labels)
    return float(nll[forget].mean() - nll[~forget].mean())


def test_lora_targets_the_language_model_attention_only() -> None:
    vlm, _ = tiny_vlm("llava")
    names = language_model_projections(vlm)
    assert names and all(".language_model." in name for name in names)
    assert {name.rsplit(".", 1)[-1] for name in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    model = prepare_model(vlm, lora_r=4)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and "language_model" in name for name in trainable)
    assert not any("vision" in name for name in trainable)


def test_full_fine_tuning_trains_the_language_model_not_the_vision_tower() -> None:
    vlm, _ = tiny_vlm("llava")
    model = prepare_model(vlm, full=True)
    assert model is vlm
    trainable = {name for name, p in vlm.named_parameters() if p.requires_grad}
    assert any("language_model" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_each_baseline_unlearns_with_lora_and_leaves_base_weights_untouched(
    tmp_path, method
) -> None:
    vlm, processor = tiny_vlm("llava")
    torch.manual_seed(0)
    model = prepare_model(vlm, lora_r=4)
    before = base_weights(model)
    dataset = tiny_dataset()
    trainer = get_baseline_trainer(method)(
        model, config(tmp_path), train_dataset=dataset, processing_class=processor
    )
    collator = UnlearningDataCollator(processor)
    gap_before = forget_gap(model, collator, dataset)
    trainer.train()
    assert_base_identical(before, model)
    gap_after = forget_gap(model, collator, dataset)
    # The forget answers became less likely than the retain answers (GA included: it pushes
    # the forget rows' answers down harder than the retain rows' that share their tokens).
    assert gap_after > gap_before, (method, gap_before, gap_after)
    logged = [entry for entry in trainer.state.log_history if "forget_loss" in entry]
    assert len(logged) == 3
    first = logged[0]
    # The LoRA B matrices start at zero, so the first step's model IS the reference: each
    # reference-based term takes its value at pi = pi_ref. Proof that the reference is the
    # same model with its adapter disabled.
    if method == "npo":
        assert first["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)
    if method == "idkpo":
        assert first["forget_loss"] == pytest.approx(math.log(2), rel=1e-4)
    if method == "kl":
        assert first["retain_loss"] == pytest.approx(0.0, abs=1e-6)
    if method == "ga":
        assert all(entry["retain_loss"] == 0 for entry in logged)
        assert set(trainer.train_dataset["split"]) == {"forget"}


def test_idkpo_makes_the_refusal_more_likely_than_the_answer(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    torch.manual_seed(0)
    model = prepare_model(vlm, lora_r=4)
    dataset = tiny_dataset()
    batch = UnlearningDataCollator(processor, with_refusals=True)(list(dataset))
    refusal = batch.pop("refusal")
    forget, labels = batch.pop("forget"), batch.pop("labels")
    refusal_labels = refusal.pop("labels")

    def preference_margin() -> float:
        """log pi(refusal) - log pi(answer) on the forget rows, summed over tokens (DPO's)."""
        with torch.no_grad():
            chosen = answer_log_probs(model(**refusal).logits, refusal_labels)[0]
            rejected = answer_log_probs(model(**batch).logits, labels)[0][forget]
        return float((chosen - rejected).mean())

    before = preference_margin()
    IdkPOTrainer(
        model,
        config(tmp_path, max_steps=4),
        train_dataset=dataset,
        processing_class=processor,
    ).train()
    assert preference_margin() > before


def test_full_fine_tuning_needs_an_explicit_reference(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    reference = copy.deepcopy(vlm)
    model = prepare_model(vlm, full=True)
    with pytest.raises(ValueError, match="ref_model="):
        NPOTrainer(
            model, config(tmp_path), train_dataset=tiny_dataset(), processing_class=processor
        )
    reference_before = snapshot(reference)
    trainer = NPOTrainer(
        model,
        config(tmp_path, max_steps=2),
        train_dataset=tiny_dataset(),
        processing_class=processor,
        ref_model=reference,
    )
    language_before = snapshot(vlm.model.language_model)
    trainer.train()
    assert_identical(reference_before, reference)
    after = vlm.model.language_model.state_dict()
    assert any(not torch.equal(language_before[key], after[key]) for key in language_before)
    first = next(entry for entry in trainer.state.log_history if "forget_loss" in entry)
    assert first["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)


def test_gradient_ascent_needs_no_retain_rows(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    forget_only = tiny_dataset().filter(lambda row: row["split"] == "forget")
    trainer = GATrainer(
        prepare_model(vlm, lora_r=4),
        config(tmp_path, max_steps=1),
        train_dataset=forget_only,
        processing_class=processor,
    )
    trainer.train()
    with pytest.raises(ValueError, match="retain"):
        NPOTrainer(
            prepare_model(tiny_vlm("llava")[0], lora_r=4),
            config(tmp_path),
            train_dataset=forget_only,
            processing_class=processor,
        )


def test_refusals_arrive_in_a_separate_batch_with_the_same_photos() -> None:
    _, processor = tiny_vlm("llava")
    rows = list(tiny_dataset(2))
    batch = UnlearningDataCollator(processor, with_refusals=True)(rows)
    assert batch["forget"].tolist() == [row["split"] == "forget" for row in rows]
    refusal = batch["refusal"]
    assert refusal["input_ids"].shape[0] == sum(row["split"] == "forget" for row in rows)
    first_forget = batch["forget"].tolist().index(True)
    assert torch.equal(refusal["pixel_values"][0], batch["pixel_values"][first_forget])
    assert "query_mask" not in batch and "forget" not in refusal


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda vlm, tmp: (vlm.requires_grad_(False), config(tmp)), "No parameter"),
        (lambda vlm, tmp: (prepare_model(vlm, lora_r=4), object()), "UnlearningTrainingConfig"),
    ],
)
def test_bad_setups_fail_with_the_fix(tmp_path, build, message) -> None:
    vlm, processor = tiny_vlm("llava")
    model, args = build(vlm, tmp_path)
    with pytest.raises((TypeError, ValueError), match=message):
        GATrainer(model, args, train_dataset=tiny_dataset(), processing_class=processor)


def test_unknown_method_and_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="choose one of ga, gd, kl, npo, idkpo"):
        get_baseline_trainer("rmu")
    with pytest.raises(ValueError, match="beta must be > 0"):
        config(tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="lora_r"):
        prepare_model(tiny_vlm("llava")[0], lora_r=0)


def test_a_batch_without_forget_rows_is_a_zero_step_not_a_crash(tmp_path) -> None:
    """Gradient ascent on a list dataset (no filtering) whose batch holds retain rows only."""
    vlm, processor = tiny_vlm("llava")
    model = prepare_model(vlm, lora_r=4)
    retain_rows = [row for row in tiny_dataset() if row["split"] == "retain"]
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    trainer = GATrainer(
        model,
        config(tmp_path, max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2),
        train_dataset=retain_rows,
        processing_class=processor,
    )
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "forget_loss" in entry)
    assert logged["forget_loss"] == 0 and logged["retain_loss"] == 0
    after = dict(model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)


def sharper_reference(trainer_class: type[ForgetRetainTrainer]) -> type[ForgetRetainTrainer]:
    """``trainer_class`` whose reference logits are the default's doubled, counting its calls."""

    class SharperReference(trainer_class):  # type: ignore[valid-type, misc]
        calls = 0

        def reference_logits(self, model, inputs):
            type(self).calls += 1
            return super().reference_logits(model, inputs) * 2

    return SharperReference


def test_reference_logits_is_the_one_reference_of_cagul_and_the_baselines(tmp_path) -> None:
    """Overriding `ForgetRetainTrainer.reference_logits` changes every reference-based term.

    At the first step the fitted model is its reference (LoRA B and CAGUL's encoder start as
    the identity), so KL and CAGUL's retain KL are 0 and NPO's loss is 2/beta ln 2 with the
    default reference (see the test above and tests/test_trainer.py); with a sharper
    reference they are not.
    """
    first: dict[str, dict[str, float]] = {}
    for trainer_class in (KLTrainer, NPOTrainer, CagulTrainer):
        vlm, processor = tiny_vlm("llava")
        torch.manual_seed(0)
        subclass = sharper_reference(trainer_class)
        if trainer_class is CagulTrainer:
            model, args = get_cagul_model(vlm, CagulConfig()), CagulTrainingConfig
        else:
            model, args = prepare_model(vlm, lora_r=4), UnlearningTrainingConfig
        values = {"max_steps": 1, "per_device_train_batch_size": 8, "balance_splits": False}
        trainer = subclass(
            model,
            args(**trainer_arguments(tmp_path, **values)),
            train_dataset=tiny_dataset(),
            processing_class=processor,
        )
        trainer.train()
        assert subclass.calls >= 1, trainer_class
        first[trainer_class.__name__] = trainer.state.log_history[0]
    assert first["KLTrainer"]["retain_loss"] > 1e-3
    assert first["NPOTrainer"]["forget_loss"] != pytest.approx(2 / 0.1 * math.log(2), rel=1e-2)
    assert first["CagulTrainer"]["retain_kl"] > 1e-3


def test_forget_flags_keep_their_old_name_for_one_release(tmp_path) -> None:
    """Batches from a user's collator may still flag forget rows ``cagul_forget``."""
    vlm, processor = tiny_vlm("llava")
    model = prepare_model(vlm, lora_r=4)
    trainer = GDTrainer(
        model, config(tmp_path), train_dataset=tiny_dataset(), processing_class=processor
    )
    batch = UnlearningDataCollator(processor)(list(tiny_dataset(2)))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        old = {**{k: v for k, v in batch.items() if k != "forget"}, "cagul_forget": batch["forget"]}
        with pytest.warns(FutureWarning, match="is now 'forget'"):
            assert torch.equal(trainer.compute_loss(model, old), loss)
        del old["cagul_forget"]
        with pytest.raises(ValueError, match="no 'forget' key"):
            trainer.compute_loss(model, old)


def test_an_empty_term_is_an_exact_zero_in_the_graph() -> None:
    logits = torch.tensor([[float("inf"), float("nan")]], requires_grad=True)
    zero = ForgetRetainTrainer.empty_term(logits)
    assert zero.dtype == torch.float32 and float(zero.detach()) == 0 and zero.requires_grad
    zero.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))

"""CagulTrainer's depth term: the forget rows' true answers made unlikely under the rewrite."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from test_trainer import make_trainer, training_args
from vlm_inputs import randomise_encoder

from hf_cagul import CagulModel, CagulTrainer
from hf_cagul.data import (
    CAGUL_TARGETS,
    REPLACED_FLAG,
    TRUE_ANSWER_BATCH,
    CagulDataCollator,
    PhotoAugmentation,
)
from hf_cagul.losses import answer_log_probs

DEPTH_OFF_KEYS = {"loss", "forget_loss", "retain_kl", "discriminator_loss"}


def _adapter(model: CagulModel) -> dict[str, torch.Tensor]:
    return {
        name: tensor.clone() for name, tensor in model.active_adapter_module.state_dict().items()
    }


def _losses(trainer: CagulTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "forget_loss" in entry]


def test_the_depth_term_is_off_by_default_and_its_batch_changes_nothing(tmp_path) -> None:
    """Off, the fit is bit-identical whether or not the batches carry the true answers; on, it
    is another fit."""
    settings: dict[str, Any] = {"max_steps": 3, "augment_images": True}
    assert training_args(tmp_path).depth_weight == 0
    default, default_model = make_trainer(tmp_path / "default", **settings)
    assert TRUE_ANSWER_BATCH not in default.data_collator(list(default.train_dataset))
    default.train()
    for entry in default.state.log_history:
        if "forget_loss" in entry:
            assert set(entry) >= DEPTH_OFF_KEYS and "depth_loss" not in entry

    carrying, carrying_model = make_trainer(tmp_path / "carrying", **settings)
    carrying.data_collator = CagulDataCollator(
        carrying.processing_class,
        augment=PhotoAugmentation(seed=0),
        policy=replace(CAGUL_TARGETS, true_answer_batch=True),
    )
    assert TRUE_ANSWER_BATCH in carrying.data_collator(list(carrying.train_dataset))
    carrying.train()
    assert _losses(carrying) == _losses(default)
    expected = _adapter(default_model)
    for name, tensor in _adapter(carrying_model).items():
        assert torch.equal(tensor, expected[name]), name

    depth, depth_model = make_trainer(tmp_path / "depth", depth_weight=1.0, **settings)
    assert TRUE_ANSWER_BATCH in depth.data_collator(list(depth.train_dataset))
    depth.train()
    assert any("depth_loss" in entry for entry in depth.state.log_history)
    changed = _adapter(depth_model)
    assert any(not torch.equal(changed[name], expected[name]) for name in expected)


def _true_answer_log_likelihood(trainer: CagulTrainer, model: CagulModel) -> float:
    """Mean per-token log-likelihood of the forget rows' true answers over the training set,
    every image rewritten (as the gate does for a flagged photo)."""
    collator = CagulDataCollator(
        trainer.processing_class, policy=replace(CAGUL_TARGETS, true_answer_batch=True)
    )
    batch = dict(collator(list(trainer.train_dataset))[TRUE_ANSWER_BATCH])
    labels, query_mask = batch.pop("labels"), batch.pop("query_mask")
    with torch.no_grad(), model.force_gate(True):
        logits = model(**batch, query_mask=query_mask).logits
    log_probs, tokens = answer_log_probs(logits, labels)
    return float(log_probs.sum() / tokens.sum())


@pytest.mark.parametrize(
    ("depth_loss", "weight"),
    # The tiny VLM never learned these answers (p ~ 1/vocabulary): unlikelihood's gradient is
    # p times NPO's there, hence its weight.
    [("npo", 1.0), ("unlikelihood", 300.0)],
)
def test_the_depth_term_lowers_the_true_answers_likelihood_faster(
    tmp_path, depth_loss: str, weight: float
) -> None:
    settings: dict[str, Any] = {"max_steps": 6}
    without, without_model = make_trainer(tmp_path / "without", **settings)
    before = _true_answer_log_likelihood(without, without_model)
    without.train()
    with_depth, with_model = make_trainer(
        tmp_path / "with", depth_weight=weight, depth_loss=depth_loss, **settings
    )
    assert _true_answer_log_likelihood(with_depth, with_model) == before
    with_depth.train()
    fall_without = before - _true_answer_log_likelihood(without, without_model)
    fall_with = before - _true_answer_log_likelihood(with_depth, with_model)
    assert fall_with > fall_without + 0.05, (fall_with, fall_without)
    logged = [entry for entry in with_depth.state.log_history if "depth_loss" in entry]
    assert len(logged) == 6 and all(math.isfinite(entry["depth_loss"]) for entry in logged)


def _token_log_probs(
    logits: torch.Tensor, labels: torch.Tensor
) -> list[list[tuple[torch.Tensor, int]]]:
    """Per row, the float64 log-softmax at each position whose next label is an answer token,
    and that token: ``[[(log_softmax, token), ...], ...]``, by explicit loops."""
    rows: list[list[tuple[torch.Tensor, int]]] = []
    for row in range(labels.shape[0]):
        tokens: list[tuple[torch.Tensor, int]] = []
        for position in range(labels.shape[1] - 1):
            token = int(labels[row, position + 1])
            if token != -100:
                tokens.append((torch.log_softmax(logits[row, position].double(), -1), token))
        rows.append(tokens)
    return rows


def _depth_only_trainer(tmp_path, **overrides: Any) -> tuple[CagulTrainer, CagulModel]:
    trainer, model = make_trainer(
        tmp_path,
        forget_weight=0.0,
        retain_weight=0.0,
        discriminator_weight=0.0,
        depth_weight=1.0,
        **overrides,
    )
    randomise_encoder(model)  # so the rewrite changes the answers' likelihood
    return trainer, model


@pytest.mark.parametrize("depth_loss", ["npo", "unlikelihood"])
def test_the_depth_loss_equals_its_hand_computation(tmp_path, depth_loss: str) -> None:
    beta = 0.5
    trainer, model = _depth_only_trainer(tmp_path, depth_loss=depth_loss, depth_beta=beta)
    rows = list(trainer.train_dataset)
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(model, dict(batch))

    answers = dict(batch[TRUE_ANSWER_BATCH])
    labels, query_mask = answers.pop("labels"), answers.pop("query_mask")
    assert labels.shape[0] == sum(row["split"] == "forget" for row in rows)
    with torch.no_grad(), model.force_gate(True):
        adapted = _token_log_probs(model(**answers, query_mask=query_mask).logits, labels)
    with torch.no_grad(), model.disable_adapter():
        base = _token_log_probs(model(**answers).logits, labels)
    if depth_loss == "npo":
        # (2 / beta) * mean over rows of log(1 + (pi(y|x) / pi_ref(y|x)) ** beta).
        ratios = [
            sum(float(lp[token]) for lp, token in row)
            - sum(float(lp[token]) for lp, token in ref_row)
            for row, ref_row in zip(adapted, base, strict=True)
        ]
        assert any(abs(ratio) > 1e-3 for ratio in ratios)  # the rewrite moved the answers
        expected = (2 / beta) * sum(math.log1p(math.exp(beta * r)) for r in ratios) / len(ratios)
    else:
        # Mean over the answer tokens of -log(1 - pi(token | prefix)).
        terms = [-math.log1p(-math.exp(float(lp[token]))) for row in adapted for lp, token in row]
        expected = sum(terms) / len(terms)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("depth_loss", ["npo", "unlikelihood"])
def test_the_depth_term_leaves_answers_the_forget_target_keeps(tmp_path, depth_loss: str) -> None:
    # A forget row whose forget target is its true answer (a visual question) keeps it: the
    # depth term pushes down only the answers a forget target replaces.
    trainer, model = _depth_only_trainer(tmp_path, depth_loss=depth_loss)
    rows = list(trainer.train_dataset)
    forget = [index for index, row in enumerate(rows) if row["split"] == "forget"]
    for index in forget[::2]:
        rows[index] = {**rows[index], "forget_target": rows[index]["answer"]}
    batch = trainer.data_collator(rows)
    flags = batch[TRUE_ANSWER_BATCH][REPLACED_FLAG].tolist()
    assert flags == [index not in forget[::2] for index in forget]
    with torch.no_grad():
        mixed = float(trainer.compute_loss(model, dict(batch)))
        replaced = [rows[index] for index in forget[1::2]]
        alone = float(trainer.compute_loss(model, dict(trainer.data_collator(replaced))))
        kept = [rows[index] for index in forget[::2]]
        none = trainer.compute_loss(model, dict(trainer.data_collator(kept)))
    assert mixed == pytest.approx(alone, rel=1e-4) and alone > 0
    assert float(none) == 0.0


def test_a_batch_without_forget_rows_gives_an_exact_zero_that_backpropagates(tmp_path) -> None:
    trainer, model = _depth_only_trainer(tmp_path)
    retain = [row for row in trainer.train_dataset if row["split"] == "retain"]
    batch = trainer.data_collator(retain)
    assert TRUE_ANSWER_BATCH not in batch
    loss = trainer.compute_loss(model, dict(batch))
    assert isinstance(loss, torch.Tensor) and float(loss) == 0.0
    loss.backward()
    gradients = [p.grad for p in model.active_adapter_module.parameters() if p.grad is not None]
    assert all(float(grad.abs().sum()) == 0.0 for grad in gradients)


def test_the_depth_term_needs_the_true_answer_batch(tmp_path) -> None:
    trainer, model = _depth_only_trainer(tmp_path)
    batch = CagulDataCollator(trainer.processing_class)(list(trainer.train_dataset))
    with pytest.raises(ValueError, match="true_answer_batch=True"):
        trainer.compute_loss(model, dict(batch))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depth_weight": -1.0}, "depth_weight=-1.0 must be >= 0"),
        ({"depth_loss": "ga"}, "choose one of npo, unlikelihood"),
        ({"depth_beta": 0.0}, "depth_beta=0.0 must be > 0"),
    ],
)
def test_bad_depth_settings_are_refused(tmp_path, overrides: dict[str, Any], message) -> None:
    with pytest.raises(ValueError, match=message):
        training_args(tmp_path, **overrides)


def test_the_depth_term_alone_is_a_loss(tmp_path) -> None:
    args = training_args(
        tmp_path, forget_weight=0, retain_weight=0, discriminator_weight=0, depth_weight=0.5
    )
    assert args.depth_weight == 0.5

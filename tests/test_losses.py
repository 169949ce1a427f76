"""The loss functions of hf_cagul.losses on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hf_cagul.losses import (
    answer_log_probs,
    answer_unlikelihoods,
    dpo_loss,
    half_per_class,
    mean_answer_nll,
    npo_loss,
    token_kl,
)

IGNORE = -100


def two_token_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary of 2; row 0 answers tokens [1, 0], row 1 answers token [1] only.

    Logit rows: [0, 0] gives p = 1/2 each; [0, ln 3] gives p(1) = 3/4, p(0) = 1/4.
    """
    half, three_quarters = [0.0, 0.0], [0.0, math.log(3.0)]
    logits = torch.tensor(
        [
            [half, three_quarters, half],  # predicts position 1 with p(1)=1/2, 2 with p(0)=1/4
            [three_quarters, half, half],  # predicts position 1 with p(1)=3/4, 2 is ignored
        ]
    )
    labels = torch.tensor([[IGNORE, 1, 0], [IGNORE, 1, IGNORE]])
    return logits, labels


def test_answer_log_probs_sum_the_answer_tokens_only() -> None:
    logits, labels = two_token_case()
    log_probs, counts = answer_log_probs(logits, labels)
    assert counts.tolist() == [2, 1]
    expected = [math.log(0.5) + math.log(0.25), math.log(0.75)]
    assert log_probs.tolist() == pytest.approx(expected, abs=1e-6)


def test_answer_unlikelihoods_sum_minus_log_one_minus_p_over_the_answer_tokens() -> None:
    logits, labels = two_token_case()
    unlikelihoods, counts = answer_unlikelihoods(logits, labels)
    assert counts.tolist() == [2, 1]
    expected = [-(math.log(1 - 0.5) + math.log(1 - 0.25)), -math.log(1 - 0.75)]
    assert unlikelihoods.tolist() == pytest.approx(expected, abs=1e-6)


def test_answer_unlikelihood_of_a_certain_token_is_finite_with_a_gradient() -> None:
    """A memorised token whose probability rounds to 1 in float32: ``-log(1 - p)`` computed as
    ``-log(1 - exp(log p))`` would be infinite, with no gradient to push it down."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 40.0], [0.0, 0.0, 0.0]]])
    logits.requires_grad_(True)
    labels = torch.tensor([[IGNORE, IGNORE, 2]])
    assert float(torch.softmax(logits[0, 1], dim=-1)[2]) == 1.0
    unlikelihood, count = answer_unlikelihoods(logits, labels)
    # 1 - p = 2 e^-40 / (2 e^-40 + 1): -log(1 - p) = 40 - ln 2 (to float32 precision).
    assert float(unlikelihood) == pytest.approx(40 - math.log(2), rel=1e-6)
    assert count.tolist() == [1]
    unlikelihood.sum().backward()
    assert logits.grad is not None
    assert float(logits.grad[0, 1, 2]) == pytest.approx(1.0, abs=1e-5)  # p, as p -> 1
    assert float(logits.grad[0, 0].abs().sum()) == 0.0  # the prompt's position carries nothing


def test_mean_answer_nll_is_per_row_and_per_token() -> None:
    logits, labels = two_token_case()
    expected = [-(math.log(0.5) + math.log(0.25)) / 2, -math.log(0.75)]
    assert mean_answer_nll(logits, labels).tolist() == pytest.approx(expected, abs=1e-6)


def test_token_kl_reference_weighs_the_log_ratio() -> None:
    reference = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    current = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # KL(p || q) = sum p log(p / q): row 0 is 0; row 1 is 0.9 ln 1.8 + 0.1 ln 0.2.
    expected = (0.0 + 0.9 * math.log(1.8) + 0.1 * math.log(0.2)) / 2
    assert float(token_kl(reference, current)) == pytest.approx(expected, abs=1e-6)
    assert float(token_kl(current, current)) == pytest.approx(0.0, abs=1e-7)


def test_npo_loss_matches_its_definition() -> None:
    # pi / pi_ref = 2 on the first row, 1 on the second; beta = 0.1.
    log_probs = torch.tensor([math.log(0.5), math.log(0.3)])
    reference = torch.tensor([math.log(0.25), math.log(0.3)])
    expected = (2 / 0.1) * (math.log(1 + 2**0.1) + math.log(2)) / 2
    assert float(npo_loss(log_probs, reference, beta=0.1)) == pytest.approx(expected, rel=1e-5)


def test_npo_gradient_tends_to_gradient_ascent_as_beta_shrinks() -> None:
    log_probs = torch.tensor([-1.0, -3.0], requires_grad=True)
    reference = torch.tensor([-2.0, -1.0])
    npo_loss(log_probs, reference, beta=1e-4).backward()
    # Gradient ascent minimises mean(log pi): gradient 1/n per row; NPO's is 2 sigma(.)/n -> 1/n.
    assert log_probs.grad is not None
    assert log_probs.grad.tolist() == pytest.approx([0.5, 0.5], abs=1e-3)


def test_dpo_loss_matches_its_definition() -> None:
    # Margin = (-1 - -1.5) - (-2 - -1) = 1.5; loss = -log sigmoid(0.5 * 1.5) = log(1 + e^-0.75).
    loss = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-2.0]),
        torch.tensor([-1.5]),
        torch.tensor([-1.0]),
        beta=0.5,
    )
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.75)), rel=1e-6)


def test_at_the_reference_npo_and_dpo_take_their_known_values() -> None:
    same = torch.tensor([-4.0, -0.5])
    assert float(npo_loss(same, same, beta=0.1)) == pytest.approx(20 * math.log(2), rel=1e-6)
    assert float(dpo_loss(same, same, same, same, beta=0.1)) == pytest.approx(math.log(2))


@pytest.mark.parametrize("loss", [npo_loss, dpo_loss])
def test_beta_must_be_positive(loss) -> None:
    values = [torch.zeros(1)] * (2 if loss is npo_loss else 4)
    with pytest.raises(ValueError, match="beta > 0"):
        loss(*values, beta=0.0)


def test_half_per_class() -> None:
    weights = half_per_class(torch.tensor([True, False, False, False]))
    assert weights.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert half_per_class(torch.tensor([False, False])).tolist() == [0.25, 0.25]


def test_npo_and_dpo_sum_over_rows_for_means_over_more_rows() -> None:
    """``reduction="sum"``: the rows' total, so that a mean can span several processes."""
    log_probs = torch.tensor([math.log(0.5), math.log(0.3), -2.0])
    reference = torch.tensor([math.log(0.25), math.log(0.3), -1.0])
    npo_sum = npo_loss(log_probs, reference, beta=0.1, reduction="sum")
    assert float(npo_sum) == pytest.approx(3 * float(npo_loss(log_probs, reference, beta=0.1)))
    dpo_args = (log_probs, reference, reference, log_probs)
    dpo_sum = dpo_loss(*dpo_args, beta=0.5, reduction="sum")
    assert float(dpo_sum) == pytest.approx(3 * float(dpo_loss(*dpo_args, beta=0.5)))
    empty = torch.zeros(0)
    assert float(npo_loss(empty, empty.detach(), beta=0.1, reduction="sum")) == 0
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        npo_loss(log_probs, reference, beta=0.1, reduction="none")  # type: ignore[arg-type]

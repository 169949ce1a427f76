"""Loss functions shared by `CagulTrainer` and the fine-tuning baselines (`hf_cagul.baselines`).

All functions take logits and labels as the VLM returns and the collators build them: logits
``(batch, seq, vocab)`` and labels ``(batch, seq)`` with `IGNORE_INDEX` outside the answer; the
logit at position ``t`` predicts the label at ``t + 1``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hf_cagul.data.collator import IGNORE_INDEX

__all__ = [
    "answer_log_probs",
    "answer_unlikelihoods",
    "dpo_loss",
    "half_per_class",
    "mean_answer_nll",
    "mean_nll",
    "npo_loss",
    "token_kl",
]


def answer_log_probs(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each row's answer and its token count.

    Returns:
        ``(log_probs, counts)``, both ``(batch,)``: the sum over the answer tokens of
        ``log pi(token | prefix)`` (float32) and the number of answer tokens of each row.
    """
    shifted_logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    answer = targets != IGNORE_INDEX
    token_log_probs = torch.gather(
        F.log_softmax(shifted_logits, dim=-1), 2, targets.clamp_min(0).unsqueeze(-1)
    ).squeeze(-1)
    return (token_log_probs * answer).sum(dim=1), answer.sum(dim=1)


def answer_unlikelihoods(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unlikelihood of each row's answer (Welleck et al. 2019, arXiv 1908.04319) and its token
    count.

    Returns:
        ``(unlikelihoods, counts)``, both ``(batch,)``: the sum over the answer tokens of
        ``-log(1 - pi(token | prefix))`` (float32), and the number of answer tokens of each row.
        Near zero for an unlikely answer, large for a likely one; its gradient fades as a token
        becomes unlikely, so minimising it stops pushing once the answer is gone.
    """
    targets = labels[:, 1:]
    answer = targets != IGNORE_INDEX
    # Only the answer positions: a vocabulary-wide tensor per answer token, not per position.
    log_probs = F.log_softmax(logits[:, :-1][answer].float(), dim=-1)
    # log(1 - p) as the log-sum of every other token's probability: exact and differentiable
    # even where the answer token's probability rounds to 1 (a memorised answer).
    others = log_probs.scatter(-1, targets[answer].unsqueeze(-1), float("-inf"))
    per_token = log_probs.new_zeros(answer.shape)
    per_token[answer] = -torch.logsumexp(others, dim=-1)
    return per_token.sum(dim=1), answer.sum(dim=1)


def mean_answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean token negative log-likelihood of the answer, ``(batch,)``.

    Rows without an answer token get 0 (they carry no loss).
    """
    return mean_nll(*answer_log_probs(logits, labels))


def mean_nll(log_probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-row mean token NLL from `answer_log_probs`'s output (0 for rows without tokens)."""
    return -log_probs / counts.clamp_min(1)


def token_kl(
    reference: torch.Tensor, current: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """KL(reference || current) between two ``(rows, vocab)`` logit tensors, summed over the
    vocabulary, then averaged (``"batchmean"``) or summed (``"sum"``) over the rows.

    The direction of TOFU's KL baseline and of CAGUL's retain term: the reference (base)
    distribution weighs the log-ratio, so the current model is pulled to cover every answer the
    reference gives.
    """
    return F.kl_div(
        F.log_softmax(current.float(), dim=-1),
        F.log_softmax(reference.float(), dim=-1),
        log_target=True,
        reduction=reduction,
    )


def npo_loss(
    log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    beta: float,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024, arXiv 2404.05868, eq. 3).

    ``(2 / beta) * mean[ log(1 + (pi(y|x) / pi_ref(y|x)) ** beta) ]`` over the forget rows, with
    ``pi(y|x)`` the probability of the whole answer (``log_probs`` are sums over its tokens).
    As ``beta -> 0`` its gradient tends to gradient ascent's; unlike gradient ascent it is
    bounded below, so it does not collapse the model. ``reduction="sum"``: summed over the rows
    instead (for a mean over more rows than these, e.g. across processes).
    """
    if beta <= 0:
        raise ValueError(f"NPO needs beta > 0, got {beta}.")
    return (2.0 / beta) * _reduce(F.softplus(beta * (log_probs - reference_log_probs)), reduction)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023, arXiv 2305.18290, eq. 7).

    ``mean[ -log sigmoid(beta * ((chosen - reference_chosen) - (rejected - reference_rejected)))
    ]`` with each argument the summed answer log-probability per row. IdkPO uses it with the
    refusal as the chosen answer and the true answer as the rejected one. ``reduction="sum"``:
    summed over the rows instead.
    """
    if beta <= 0:
        raise ValueError(f"DPO needs beta > 0, got {beta}.")
    margin = (chosen - reference_chosen) - (rejected - reference_rejected)
    return -_reduce(F.logsigmoid(beta * margin), reduction)


def _reduce(values: torch.Tensor, reduction: Literal["mean", "sum"]) -> torch.Tensor:
    """The mean or the sum of per-row ``values``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


def half_per_class(flags: torch.Tensor) -> torch.Tensor:
    """Weights giving the True and the False elements of ``flags`` one half each in total."""
    positives, negatives = flags.sum().clamp_min(1), (~flags).sum().clamp_min(1)
    return torch.where(flags, 0.5 / positives, 0.5 / negatives)

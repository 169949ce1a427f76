"""Model-based scores: per-token answer NLLs by teacher forcing, and Min-K% membership inference.

`answer_nlls` is the one model pass behind the likelihood metrics of
`hf_cagul.evaluation.metrics` (probability, normalised probability, truth ratio, Min-K%): score
the ground-truth, paraphrased and perturbed answers of a dataset's questions, then combine the
NLLs with the pure functions there.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_cagul.data import CagulDataCollator
from hf_cagul.data.collator import IGNORE_INDEX
from hf_cagul.data.schema import ANSWER_COLUMN, RETAIN_SPLIT, SPLIT_COLUMN
from hf_cagul.devices import input_device
from hf_cagul.evaluation.metrics import min_k_percent_score, roc_auc
from hf_cagul.model import CagulModel

__all__ = ["answer_nlls", "mean_nll", "min_k_mia_auc"]


@torch.no_grad()
def answer_nlls(
    model: Any,
    processor: Any,
    dataset_or_rows: Any,
    answers: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Per-token NLLs of an answer to each row's image and question, by teacher forcing.

    Each row goes through `CagulDataCollator` as a ``"retain"`` row (whatever its ``split``),
    with its ``answer`` replaced by ``answers[i]`` when ``answers`` is given; so the scored
    target is exactly that answer (never a forget row's refusal or ``forget_target``), in the
    same prompt format as training: ``prompt + separator + answer + eos``. The model runs once
    per batch under `torch.no_grad`, in eval mode (each module's train/eval mode is restored
    afterwards), and the NLL of target token ``t`` is the cross-entropy of the logits at
    position ``t - 1`` (the causal shift), computed in float32 as transformers' loss does.
    Padding does not change the values (up to float error): batches are right-padded and
    every row is causal.

    Args:
        model: A VLM, or a `CagulModel` (which also gets the collator's ``query_mask``, so the
            adapter ranks visual tokens by the prompt's attention, as in training).
        processor: The VLM's processor.
        dataset_or_rows: A `datasets.Dataset` in the `hf_cagul.data` contract, or a sequence
            of row dicts with ``image``, ``question``, ``answer`` (and ``split``, which is
            ignored).
        answers: One answer per row to score instead of the rows' ``answer`` (paraphrased or
            perturbed answers, for instance); None: score the rows' own ``answer``.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.

    Returns:
        One float32 CPU tensor per row, of shape ``(target tokens,)``: the NLL of each target
        token, eos included. ``tensor.mean()`` is the answer's mean token NLL, the value the
        metrics take (see `mean_nll`).

    Raises:
        ValueError: If ``answers`` does not have one entry per row, ``batch_size`` is not
            positive, or a row breaks the data contract (raised by the collator).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    total = len(dataset_or_rows)
    if answers is not None and len(answers) != total:
        raise ValueError(f"{len(answers)} answers for {total} rows; pass one answer per row.")
    collator = CagulDataCollator(processor)
    base = model.base_model if isinstance(model, CagulModel) else model
    device = input_device(model)
    keep_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    nlls: list[torch.Tensor] = []
    try:
        batches = _row_batches(dataset_or_rows, batch_size)
        for start, rows in tqdm(
            batches,
            total=-(-total // batch_size),
            desc="scoring answers",
            disable=not progress,
        ):
            for offset, row in enumerate(rows):
                row[SPLIT_COLUMN] = RETAIN_SPLIT
                if answers is not None:
                    row[ANSWER_COLUMN] = answers[start + offset]
            nlls += _batch_nlls(model, collator, rows, device, keep_logits)
    finally:
        for module, training in modes:
            module.training = training
    return nlls


def _batch_nlls(
    model: Any,
    collator: CagulDataCollator,
    rows: list[dict[str, Any]],
    device: torch.device,
    keep_logits: bool,
) -> list[torch.Tensor]:
    """Per-token target NLLs of one collated batch."""
    batch = collator(rows)
    labels = batch.pop("labels")
    batch.pop("forget")
    query_mask = batch.pop("query_mask")
    inputs: dict[str, Any] = {name: value.to(device) for name, value in batch.items()}
    if isinstance(model, CagulModel):
        inputs["query_mask"] = query_mask.to(device)
    is_target = labels != IGNORE_INDEX
    seq_len = labels.shape[1]
    # Logits are needed from the position before the earliest target token onwards.
    first_target = int(is_target.long().argmax(dim=1).min())
    if keep_logits:
        inputs["logits_to_keep"] = seq_len - first_target + 1
    logits = model(**inputs, use_cache=False).logits
    skipped = seq_len - logits.shape[1]  # positions whose logits were not computed
    if first_target - 1 < skipped:
        raise RuntimeError(
            f"The model returned logits for the last {logits.shape[1]} positions only, but "
            f"targets start at position {first_target} of {seq_len}."
        )
    result = []
    for index in range(labels.shape[0]):
        positions = torch.nonzero(is_target[index]).squeeze(-1)
        targets = labels[index, positions].to(logits.device)
        row_logits = logits[index, (positions - 1 - skipped).to(logits.device)].float()
        result.append(F.cross_entropy(row_logits, targets, reduction="none").cpu())
    return result


def _row_batches(data: Any, batch_size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(start index, row dicts)`` per batch; the dicts are copies, safe to modify."""
    total = len(data)
    for start in range(0, total, batch_size):
        stop = min(total, start + batch_size)
        if hasattr(data, "column_names"):  # datasets.Dataset: one slice (columns) per batch
            columns = data[start:stop]
            rows = [
                dict(zip(columns, values, strict=True))
                for values in zip(*columns.values(), strict=True)
            ]
        else:
            rows = [dict(data[index]) for index in range(start, stop)]
        yield start, rows


def mean_nll(nlls: Sequence[torch.Tensor]) -> list[float]:
    """Mean token NLL of each answer in the output of `answer_nlls`."""
    return [float(values.float().mean()) for values in nlls]


def min_k_mia_auc(
    member_nlls: Sequence[torch.Tensor],
    nonmember_nlls: Sequence[torch.Tensor],
    k: float = 0.2,
) -> float:
    """Membership-inference AUC with Min-K% Prob (Shi et al., 2024), as open-unlearning reports.

    Each text's score is `hf_cagul.evaluation.metrics.min_k_percent_score` of its token
    log-probabilities (``-nll``, from `answer_nlls`); the higher, the more "member". The
    result is the ROC AUC of members against non-members (`hf_cagul.evaluation.metrics.
    roc_auc`): about 1 when the model still tells the forget rows it was trained on from
    held-out rows it never saw, about 0.5 when it cannot (the aim of unlearning).

    Args:
        member_nlls: Per-token NLLs of the members: forget rows the model was trained on.
        nonmember_nlls: Per-token NLLs of held-out rows the model was never trained on.
        k: Fraction of lowest-probability tokens per text, in ``(0, 1]``.

    Raises:
        ValueError: If either group is empty, a text has no tokens, or ``k`` is invalid.
    """
    if not member_nlls or not nonmember_nlls:
        raise ValueError("min_k_mia_auc needs at least one member and one non-member.")
    scores = [
        min_k_percent_score(-torch.as_tensor(values), k)
        for values in (*member_nlls, *nonmember_nlls)
    ]
    labels = [True] * len(member_nlls) + [False] * len(nonmember_nlls)
    return roc_auc(scores, labels)

"""The evaluation suite: every metric of one model on a benchmark in the data contract.

Splits it reads (a `datasets.DatasetDict`; missing splits skip their metrics):

- ``forget`` / ``retain``: rows about forget and retain subjects on training photos;
- ``forget_heldout``: photos of forget subjects never seen in training;
- ``unseen``: subjects no model was trained on (non-members for membership inference).

Rows may carry ``kind`` ("private" facts vs "visual" questions; all rows count as private
without it), ``keywords`` (default: the answer's words), ``paraphrased_answer`` and
``perturbed_answers`` (for probability and truth ratio; rows without perturbed answers are
left out of those two), ``task`` (``"generation"``, ``"multiple_choice"`` with ``options`` and
``correct_option``, ``"fill_blank"``: see `hf_cagul.evaluation.tasks`; all rows are generation
rows without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from datasets import Dataset, DatasetDict

from hf_cagul.data import CagulDataCollator
from hf_cagul.data.benchmarks import select_where
from hf_cagul.devices import input_device
from hf_cagul.evaluation.generation import generate_answers, keyword_accuracy, keyword_match
from hf_cagul.evaluation.metrics import (
    fiubench_truth_ratio,
    forget_quality,
    mean_rouge,
    model_utility,
    probability_from_nll,
    rates_at_threshold,
    roc_auc,
    truth_ratio_score,
)
from hf_cagul.evaluation.scoring import answer_nlls, mean_nll, min_k_mia_auc
from hf_cagul.evaluation.tasks import GENERATION_TASK, evenly_spread, rows_of_task, task_metrics
from hf_cagul.model import CagulModel


def rows_of_kind(dataset: Dataset, kind: str, limit: int | None = None) -> Dataset:
    """The rows of ``kind`` ("private" or "visual"), at most ``limit`` (evenly spread)."""
    if "kind" in dataset.column_names:
        dataset = select_where(dataset, "kind", lambda value: value == kind)
    elif kind != "private":
        return dataset.select([])
    return evenly_spread(dataset, limit)


def keywords_of(dataset: Dataset) -> list[list[str]]:
    """Each row's keywords (the answer's words where the dataset has none)."""
    if "keywords" in dataset.column_names:
        return [list(keywords) for keywords in dataset["keywords"]]
    return [answer.split() for answer in dataset["answer"]]


def generation_metrics(
    model: Any, processor: Any, dataset: Dataset, batch_size: int = 32
) -> dict[str, float]:
    """Keyword accuracy and ROUGE of greedy answers to ``dataset``."""
    if len(dataset) == 0:
        return {}
    answers = generate_answers(model, processor, dataset, batch_size=batch_size, progress=False)
    rouge = mean_rouge(answers, list(dataset["answer"]))
    return {
        "keyword": keyword_accuracy(answers, keywords_of(dataset)),
        "rouge1": rouge["rouge1"],
        "rougeL": rouge["rougeL"],
    }


def likelihood_metrics(
    model: Any, processor: Any, dataset: Dataset, split: str, batch_size: int = 32
) -> dict[str, Any]:
    """Answer probability and truth ratios on ``dataset`` (FIUBench definitions), plus the
    ground-truth answers' per-token NLLs (``token_nlls``, for membership inference).

    The truth ratio is FIUBench's ``exp(gt_nll - mean(perturbed_nlls))`` (the same geometric
    form as TOFU's released code) with the ground-truth answer: this benchmark's small models
    never saw paraphrased answers, whose likelihood would measure wording, not knowledge.
    """
    if "perturbed_answers" not in dataset.column_names:
        return {}
    dataset = select_where(dataset, "perturbed_answers", bool)
    if len(dataset) == 0:
        return {}
    truth_tokens = answer_nlls(model, processor, dataset, batch_size=batch_size, progress=False)
    truth = mean_nll(truth_tokens)
    perturbed_lists = [list(answers) for answers in dataset["perturbed_answers"]]
    width = min(len(answers) for answers in perturbed_lists)
    perturbed = [
        mean_nll(
            answer_nlls(
                model,
                processor,
                dataset,
                answers=[answers[i] for answers in perturbed_lists],
                batch_size=batch_size,
                progress=False,
            )
        )
        for i in range(width)
    ]
    ratios = [
        fiubench_truth_ratio(truth[row], [column[row] for column in perturbed])
        for row in range(len(dataset))
    ]
    return {
        "probability": sum(map(probability_from_nll, truth)) / len(truth),
        "truth_ratio": truth_ratio_score(ratios, split),  # type: ignore[arg-type]
        "truth_ratios": ratios,
        "token_nlls": truth_tokens,
    }


def evaluate_model(
    model: Any,
    processor: Any,
    splits: DatasetDict,
    reference_truth_ratios: Sequence[float] | None = None,
    max_rows: int = 200,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Every metric of ``model`` on ``splits`` (see the module docstring).

    Args:
        model: A VLM or a `CagulModel` (its gate decides per image, as in serving).
        processor: The VLM's processor.
        splits: The benchmark.
        reference_truth_ratios: Forget-set truth ratios of the retain-only (gold) model: with
            them, ``forget_quality`` is the KS-test p-value between the two (TOFU).
        max_rows: Cap on the rows evaluated per split and kind (evenly spread).
        batch_size: Generation and scoring batch size.

    Returns:
        Flat metrics (``forget_keyword``, ``retain_rougeL``, ``model_utility``, ``mia_auc``,
        ``forget_multiple_choice_accuracy``, ``retain_fill_blank_accuracy``...) plus
        ``forget_truth_ratios`` (a list, for other models' forget quality).
    """
    results: dict[str, Any] = {}
    questions = {name: rows_of_task(splits[name], GENERATION_TASK) for name in splits}
    private = {
        split: rows_of_kind(questions[split], "private", max_rows)
        for split in ("forget", "forget_heldout", "retain", "unseen")
        if split in splits
    }
    for split in ("forget", "forget_heldout", "retain"):
        if split not in splits:
            continue
        for name, value in task_metrics(
            model, processor, splits[split], batch_size, max_rows
        ).items():
            results[f"{split}_{name}"] = value
        visual = rows_of_kind(questions[split], "visual", max_rows)
        for suffix, rows in (("", private[split]), ("_visual", visual)):
            for name, value in generation_metrics(model, processor, rows, batch_size).items():
                results[f"{split}{suffix}_{name}"] = value
    member_nlls = None
    for split in ("forget", "retain"):
        if split not in splits:
            continue
        scores = likelihood_metrics(model, processor, private[split], split, batch_size)
        if scores:
            results[f"{split}_probability"] = scores["probability"]
            results[f"{split}_truth_ratio"] = scores["truth_ratio"]
            if split == "forget":
                results["forget_truth_ratios"] = scores["truth_ratios"]
                member_nlls = scores["token_nlls"]
    if reference_truth_ratios is not None and "forget_truth_ratios" in results:
        results["forget_quality"] = forget_quality(
            results["forget_truth_ratios"], reference_truth_ratios
        )
    utility_parts = [
        results.get(key) for key in ("retain_probability", "retain_rougeL", "retain_truth_ratio")
    ]
    if all(part is not None for part in utility_parts):
        results["model_utility"] = model_utility([float(p) for p in utility_parts if p is not None])
    if "forget" in private and "unseen" in private:
        if member_nlls is None:
            member_nlls = answer_nlls(
                model, processor, private["forget"], batch_size=batch_size, progress=False
            )
        results["mia_auc"] = min_k_mia_auc(
            member_nlls,
            answer_nlls(model, processor, private["unseen"], batch_size=batch_size, progress=False),
        )
    return results


@torch.no_grad()
def discriminator_metrics(
    model: CagulModel,
    processor: Any,
    forget_photos: Dataset,
    retain_photos: Dataset,
    batch_size: int = 32,
    stranger_photos: Dataset | None = None,
    leaks: Sequence[bool] | None = None,
    mistaken: Sequence[bool] | None = None,
) -> dict[str, float]:
    """ROC AUC, TPR and FPR of the gate on photos (one row per photo is enough), and what it
    lets through: its false positive rate on strangers and its recall of the photos that leak.

    With several active adapters the gate is their composition: an image's score is the
    highest probability any of them gives it (they must share one gate threshold).

    Args:
        model: The adapted model.
        processor: Its processor.
        forget_photos: Held-out photos of forget subjects (the positives).
        retain_photos: Held-out photos of retain subjects (the negatives of ``auc``, ``tpr``
            and ``fpr``).
        batch_size: Photos per gate pass.
        stranger_photos: Photos of people in neither set, never used to fit nor calibrate the
            gate: adds ``stranger_fpr`` (the share the gate flags) and ``stranger_photos``
            (how many there are).
        leaks: One flag per row of ``forget_photos``: True where the base model answers
            correctly, i.e. where the photo would leak without the gate (`leaking_photos`).
            Adds ``leak_recall`` (the share of those photos the gate flags; NaN when none
            leaks) and ``leaking_photos`` (how many there are).
        mistaken: With ``stranger_photos``, one flag per stranger's photo: True where the base
            model takes the stranger for a forget subject, i.e. gives a forget subject's answer
            (`mistaken_photos`). Such a photo leaks the forget subject's facts without a gate
            as surely as their own photo does. Adds ``mistaken_strangers`` (how many),
            ``mistaken_recall`` (the share of them the gate flags; NaN when none) and
            ``stranger_fpr_unmistaken`` (the share of the other strangers it flags).
            ``stranger_fpr`` still counts every stranger.

    Returns:
        ``auc``, ``tpr``, ``fpr`` and ``threshold``, plus the keys above when given.

    Raises:
        ValueError: If the active adapters use different thresholds, ``stranger_photos`` has
            no rows, ``leaks`` is not one flag per forget photo, or ``mistaken`` is not one
            flag per stranger's photo.
    """
    threshold = shared_threshold(model)
    if stranger_photos is not None and len(stranger_photos) == 0:
        raise ValueError("stranger_photos has no rows: pass photos of strangers, or None.")
    if leaks is not None and len(leaks) != len(forget_photos):
        raise ValueError(
            f"leaks has {len(leaks)} flags for {len(forget_photos)} forget photos: give one per "
            "photo, in order (`leaking_photos(model, processor, forget_photos)`)."
        )
    if mistaken is not None and (stranger_photos is None or len(mistaken) != len(stranger_photos)):
        raise ValueError(
            f"mistaken has {len(mistaken)} flags for "
            f"{0 if stranger_photos is None else len(stranger_photos)} strangers' photos: give "
            "one per photo of stranger_photos, in order (`mistaken_photos`)."
        )
    forget = gate_scores(model, processor, forget_photos, batch_size)
    retain = gate_scores(model, processor, retain_photos, batch_size)
    labels = [True] * len(forget) + [False] * len(retain)
    metrics = {
        "auc": roc_auc(forget + retain, labels),
        **rates_at_threshold(forget + retain, labels, threshold),
        "threshold": threshold,
    }
    if stranger_photos is not None:
        strangers = gate_scores(model, processor, stranger_photos, batch_size)
        negatives = [False] * len(strangers)
        metrics["stranger_fpr"] = rates_at_threshold(strangers, negatives, threshold)["fpr"]
        metrics["stranger_photos"] = len(strangers)
        if mistaken is not None:
            taken = [score for score, flag in zip(strangers, mistaken, strict=True) if flag]
            others = [score for score, flag in zip(strangers, mistaken, strict=True) if not flag]
            metrics["mistaken_strangers"] = len(taken)
            metrics["mistaken_recall"] = _flagged_share(taken, threshold)
            metrics["stranger_fpr_unmistaken"] = _flagged_share(others, threshold)
    if leaks is not None:
        leaked = [score for score, leak in zip(forget, leaks, strict=True) if leak]
        metrics["leak_recall"] = _flagged_share(leaked, threshold)
        metrics["leaking_photos"] = len(leaked)
    return metrics


def _flagged_share(scores: Sequence[float], threshold: float) -> float:
    """The share of ``scores`` the gate flags at ``threshold`` (NaN for none)."""
    if not scores:
        return float("nan")
    return rates_at_threshold(scores, [True] * len(scores), threshold)["tpr"]


def shared_threshold(model: CagulModel) -> float:
    """The gate threshold of the active adapters (an image is flagged above it).

    Raises:
        ValueError: If the active adapters use different thresholds.
    """
    thresholds = {model.cagul_config[name].gate_threshold for name in model.active_adapters}
    if len(thresholds) != 1:
        raise ValueError(
            f"The active adapters {model.active_adapters} use different gate thresholds "
            f"{sorted(thresholds)}: measure each alone (`model.set_adapter(name)`)."
        )
    return thresholds.pop()


def gate_scores(
    model: CagulModel, processor: Any, photos: Dataset, batch_size: int = 32
) -> list[float]:
    """Each photo's gate probability (the highest any active adapter gives it), one per row
    of ``photos`` (with ``image`` and ``question``)."""
    collator = CagulDataCollator(processor)
    device = input_device(model)
    probabilities: list[float] = []
    for start in range(0, len(photos), batch_size):
        rows = photos[start : start + batch_size]
        inputs = collator.prompts(rows["image"], rows["question"])
        scores = model.gate_probabilities(**{k: v.to(device) for k, v in inputs.items()})
        probabilities += scores.probabilities.max(dim=0).values.tolist()
    return probabilities


def mistaken_photos(
    model: Any, processor: Any, photos: Dataset, forget_rows: Dataset, batch_size: int = 32
) -> list[bool]:
    """Which of ``photos`` the base model takes for a forget subject: its greedy answer to the
    row's question holds every keyword of a row of ``forget_rows`` that asks the same question
    (a stranger named as a forget person, say).

    Args:
        model: A VLM, or a `CagulModel`, whose adapters are disabled here.
        processor: The VLM's processor.
        photos: One row per photo (of strangers, typically), each with a question.
        forget_rows: Rows about the forget subjects, with their questions and ``keywords``
            (default: the answer's words), e.g. the ``forget`` split; of those with a ``kind``,
            only private ones count (a visual answer, the background's colour, is no one's).
        batch_size: Generation batch size.

    Returns:
        One flag per row, in order: the ``mistaken`` of `discriminator_metrics`.
    """
    answers_of: dict[str, list[list[str]]] = {}
    private = rows_of_kind(forget_rows, "private")
    for question, keywords in zip(private["question"], keywords_of(private), strict=True):
        if keywords not in answers_of.setdefault(question, []):
            answers_of[question].append(keywords)
    answers = _bare_answers(model, processor, photos, batch_size)
    return [
        any(keyword_match(answer, keywords) == 1.0 for keywords in answers_of.get(question, []))
        for answer, question in zip(answers, photos["question"], strict=True)
    ]


def _bare_answers(model: Any, processor: Any, photos: Dataset, batch_size: int) -> list[str]:
    """The greedy answers of ``model`` with its adapters disabled."""
    bare = model.disable_adapter() if isinstance(model, CagulModel) else nullcontext()
    with bare:
        return generate_answers(model, processor, photos, batch_size=batch_size, progress=False)


def leaking_photos(model: Any, processor: Any, photos: Dataset, batch_size: int = 32) -> list[bool]:
    """Which of ``photos`` the base model leaks: its greedy answer to the row's question holds
    every keyword (a keyword match of 1).

    Args:
        model: A VLM, or a `CagulModel`, whose adapters are disabled here: what matters is what
            the photo would give away without a gate.
        processor: The VLM's processor.
        photos: One row per photo, each with a question whose answer is private (e.g. the
            person's name), and ``keywords`` (default: the answer's words).
        batch_size: Generation batch size.

    Returns:
        One flag per row, in order: the ``leaks`` of `discriminator_metrics`.
    """
    answers = _bare_answers(model, processor, photos, batch_size)
    return [
        keyword_match(answer, keywords) == 1.0
        for answer, keywords in zip(answers, keywords_of(photos), strict=True)
    ]

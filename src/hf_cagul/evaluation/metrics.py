"""Unlearning metrics on numbers and strings: ROUGE, probability, truth ratio, forget quality...

Pure functions, no model: they turn generations, answer NLLs (see
`hf_cagul.evaluation.scoring.answer_nlls`) or scores into the metrics of the VLM and LLM
unlearning benchmarks:

* FIUBench (Ma et al., 2024, "Benchmarking Vision Language Model Unlearning via Fictitious
  Facial Identity Dataset");
* TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs");
* open-unlearning (Dorna et al., 2025, the reference implementation of TOFU's metrics);
* Min-K% Prob membership inference (Shi et al., 2024, "Detecting Pretraining Data from Large
  Language Models").

Every NLL here is a **mean token NLL**: the answer's negative log-likelihood averaged over its
target tokens (eos included), as the benchmarks' ``avg_loss``. ``P = exp(-mean NLL)`` is then
the answer's per-token (length-normalised, geometric-mean) probability, TOFU's
``P(a | q)^(1/|a|)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from scipy import stats

__all__ = [
    "ROUGE_KEYS",
    "fiubench_truth_ratio",
    "forget_quality",
    "mean_rouge",
    "min_k_percent_score",
    "model_utility",
    "normalised_probability",
    "probability_from_nll",
    "rates_at_threshold",
    "roc_auc",
    "rouge_scores",
    "truth_ratio",
    "truth_ratio_score",
]

ROUGE_KEYS: tuple[str, ...] = ("rouge1", "rougeL")
"""Keys of `rouge_scores` and `mean_rouge`."""

_rouge_scorer: Any = None


def _scorer() -> Any:
    """The shared ``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True)``, built on first use."""
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _rouge_scorer


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L **recall** of ``prediction`` against ``reference``.

    As FIUBench, TOFU and open-unlearning compute it:
    ``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(reference, prediction)``,
    keeping ``.recall`` (the fraction of the reference's unigrams / longest common subsequence
    found in the prediction). rouge_score lower-cases, keeps only ``[a-z0-9]`` runs as tokens
    and applies the Porter stemmer to tokens longer than 3 characters ("running" and "runs"
    both become "run").

    Args:
        prediction: The model's generation.
        reference: The ground-truth answer.

    Returns:
        ``{"rouge1": ..., "rougeL": ...}``: the two **recalls**, each in ``[0, 1]`` (0 when the
        reference has no tokens).
    """
    scores = _scorer().score(reference, prediction)
    return {
        "rouge1": float(scores["rouge1"].recall),
        "rougeL": float(scores["rougeL"].recall),
    }


def mean_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`rouge_scores` averaged over paired predictions and references.

    Returns:
        ``{"rouge1": ..., "rougeL": ...}`` (mean recalls); NaN values for empty inputs (as
        `hf_cagul.evaluation.keyword_accuracy`).

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        return dict.fromkeys(ROUGE_KEYS, float("nan"))
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for key, value in rouge_scores(prediction, reference).items():
            totals[key] += value
    return {key: total / len(predictions) for key, total in totals.items()}


def probability_from_nll(mean_nll: float) -> float:
    """An answer's per-token probability, ``exp(-mean token NLL)`` (TOFU / FIUBench "Prob.").

    This is ``P(a | q)^(1/|a|)``, the geometric mean of the target tokens' probabilities.
    """
    return math.exp(-float(mean_nll))


def normalised_probability(gt_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """FIUBench's / TOFU's normalised probability of the ground-truth answer.

    ``P(gt) / (P(gt) + sum_i P(perturbed_i))`` with ``P = exp(-mean token NLL)``
    (open-unlearning's ``probability_w_options``, without its ``1e-10`` guard: it is computed
    as a softmax over the negated NLLs, which is exact and never divides by zero).

    Args:
        gt_nll: Mean token NLL of the ground-truth answer.
        perturbed_nlls: Mean token NLLs of the perturbed (wrong) answers to the same question.

    Returns:
        A probability in ``[0, 1]``; ``1 / (1 + len(perturbed_nlls))`` when all are equal.

    Raises:
        ValueError: If ``perturbed_nlls`` is empty.
    """
    perturbed = [float(nll) for nll in perturbed_nlls]
    if not perturbed:
        raise ValueError("normalised_probability needs at least one perturbed answer's NLL.")
    log_probs = [-float(gt_nll), *(-nll for nll in perturbed)]
    top = max(log_probs)
    weights = [math.exp(value - top) for value in log_probs]
    return weights[0] / sum(weights)


def truth_ratio(paraphrase_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """TOFU's truth ratio, as written in the TOFU paper (arithmetic mean over perturbed answers).

    ``R_truth = mean_i P(perturbed_i)^(1/|perturbed_i|) / P(paraphrased)^(1/|paraphrased|)``;
    with mean token NLLs, ``P(a)^(1/|a|) = exp(-nll_a)``, so::

        truth_ratio = mean_i(exp(-perturbed_nlls[i])) / exp(-paraphrase_nll)

    Note: TOFU's released code and open-unlearning average the perturbed answers' NLLs
    instead, i.e. take the *geometric* mean of their probabilities,
    ``exp(paraphrase_nll - mean(perturbed_nlls))``; that is `fiubench_truth_ratio` called
    with the paraphrase's NLL. By the AM-GM inequality this function's value is never
    smaller; the two agree with a single perturbed answer.

    Low values: the model prefers the (paraphrased) truth; about 1: it cannot tell the truth
    from the perturbed answers (the aim on the forget set).

    Args:
        paraphrase_nll: Mean token NLL of the paraphrased ground-truth answer.
        perturbed_nlls: Mean token NLLs of the perturbed answers.

    Raises:
        ValueError: If ``perturbed_nlls`` is empty.
    """
    perturbed = [float(nll) for nll in perturbed_nlls]
    if not perturbed:
        raise ValueError("truth_ratio needs at least one perturbed answer's NLL.")
    paraphrase = float(paraphrase_nll)
    # exp(-nll_i) / exp(-nll_para) = exp(nll_para - nll_i): no underflow for large NLLs.
    return sum(math.exp(paraphrase - nll) for nll in perturbed) / len(perturbed)


def fiubench_truth_ratio(gt_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """FIUBench's truth ratio: ``exp(gt_nll - mean(perturbed_nlls))``.

    The geometric mean of the perturbed answers' per-token probabilities over the ground
    truth's: ``exp(-mean(perturbed_nlls)) / exp(-gt_nll)``. FIUBench uses the ground-truth
    answer's NLL; passing the paraphrased answer's NLL instead gives the truth ratio of TOFU's
    released code and open-unlearning (see `truth_ratio`).

    Args:
        gt_nll: Mean token NLL of the ground-truth (or paraphrased) answer.
        perturbed_nlls: Mean token NLLs of the perturbed answers.

    Raises:
        ValueError: If ``perturbed_nlls`` is empty.
    """
    perturbed = [float(nll) for nll in perturbed_nlls]
    if not perturbed:
        raise ValueError("fiubench_truth_ratio needs at least one perturbed answer's NLL.")
    return math.exp(float(gt_nll) - sum(perturbed) / len(perturbed))


def truth_ratio_score(ratios: Sequence[float], split: Literal["forget", "retain"]) -> float:
    """Summarise per-sample truth ratios as open-unlearning (and TOFU) report them.

    * ``"forget"``: ``mean(min(TR, 1/TR))`` (open-unlearning's ``closer_to_1_better``): 1 when
      the model finds true and perturbed answers equally likely, 0 when it strongly prefers
      either.
    * ``"retain"``: ``mean(max(0, 1 - TR))`` (``true_better``): high when the model prefers
      the truth.

    ``min(TR, 1/TR)`` is taken as 0 for ``TR == 0`` (open-unlearning adds ``1e-10`` to the
    denominator instead).

    Args:
        ratios: Per-sample truth ratios (`truth_ratio` or `fiubench_truth_ratio`).
        split: Which summary to compute.

    Raises:
        ValueError: For an empty ``ratios``, a negative or NaN ratio, or an unknown ``split``.
    """
    values = [float(ratio) for ratio in ratios]
    if not values:
        raise ValueError("truth_ratio_score needs at least one truth ratio.")
    if any(math.isnan(value) or value < 0 for value in values):
        raise ValueError(f"Truth ratios must be non-negative numbers, got {values}.")
    if split == "forget":
        scores = [min(value, 1.0 / value) if value > 0 else 0.0 for value in values]
    elif split == "retain":
        scores = [max(0.0, 1.0 - value) for value in values]
    else:
        raise ValueError(f"split must be 'forget' or 'retain', got {split!r}.")
    return sum(scores) / len(scores)


def forget_quality(unlearned_ratios: Sequence[float], gold_ratios: Sequence[float]) -> float:
    """TOFU's forget quality: the p-value of a two-sample Kolmogorov-Smirnov test.

    ``scipy.stats.ks_2samp(unlearned_ratios, gold_ratios).pvalue``, comparing the forget-set
    truth ratios of the unlearned model with those of the gold model (trained on the retain
    set only). High (towards 1): the two distributions are indistinguishable. The KS statistic
    depends only on the ranks, so the p-value is the same for ``TR``, ``1/TR`` or ``log TR``
    (as long as both samples are transformed alike).

    Raises:
        ValueError: If either sample is empty.
    """
    unlearned = [float(value) for value in unlearned_ratios]
    gold = [float(value) for value in gold_ratios]
    if not unlearned or not gold:
        raise ValueError("forget_quality needs non-empty unlearned and gold samples.")
    return float(stats.ks_2samp(unlearned, gold).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """TOFU's model utility: the harmonic mean of the retain-set metrics.

    ``n / sum(1 / v)`` over ``values`` (probability, ROUGE-L and truth-ratio scores of the
    retain sets); 0 when any value is 0, so one collapsed metric sinks the utility.

    Raises:
        ValueError: For an empty ``values``, or a negative or NaN value.
    """
    numbers = [float(value) for value in values]
    if not numbers:
        raise ValueError("model_utility needs at least one value.")
    if any(math.isnan(value) or value < 0 for value in numbers):
        raise ValueError(f"model_utility needs non-negative values, got {numbers}.")
    if any(value == 0 for value in numbers):
        return 0.0
    return len(numbers) / sum(1.0 / value for value in numbers)


def min_k_percent_score(token_log_probs: Sequence[float] | torch.Tensor, k: float = 0.2) -> float:
    """Min-K% Prob (Shi et al., 2024): the mean of the ``k`` fraction of lowest token log-probs.

    Takes the ``max(1, floor(k * n))`` smallest of the ``n`` target-token log-probabilities
    (open-unlearning's count; the floor forgives float error, so ``k * n`` that is an integer
    up to rounding counts as one) and returns their mean. Higher (closer to 0) means no token
    of the text is surprising: the text looks like training data.

    Args:
        token_log_probs: Log-probabilities of the text's tokens (``-`` the per-token NLLs of
            `hf_cagul.evaluation.scoring.answer_nlls`).
        k: Fraction of tokens to keep, in ``(0, 1]``.

    Raises:
        ValueError: For no tokens, or ``k`` outside ``(0, 1]``.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}.")
    values = torch.as_tensor(token_log_probs, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("min_k_percent_score needs at least one token log-probability.")
    count = max(1, math.floor(k * values.numel() + 1e-9))
    return float(torch.sort(values).values[:count].mean())


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (higher = positive).

    Rank-based (Mann-Whitney U): ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, with
    ``R_pos`` the sum of the positives' ranks among all scores and tied scores given their
    average rank, i.e. the probability that a random positive outscores a random negative,
    counting ties as one half. Same value as ``sklearn.metrics.roc_auc_score``.

    Raises:
        ValueError: If the lengths differ or either class is missing.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels.")
    flags = [bool(label) for label in labels]
    positives = sum(flags)
    negatives = len(flags) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"roc_auc needs both classes, got {positives} positive and {negatives} negative "
            "label(s)."
        )
    ranks = stats.rankdata([float(score) for score in scores], method="average")
    positive_rank_sum = float(sum(rank for rank, flag in zip(ranks, flags, strict=True) if flag))
    u_statistic = positive_rank_sum - positives * (positives + 1) / 2
    return u_statistic / (positives * negatives)


def rates_at_threshold(
    probabilities: Sequence[float], labels: Sequence[bool], threshold: float
) -> dict[str, float]:
    """True- and false-positive rates of the decision ``probability > threshold``.

    Args:
        probabilities: Scores of the samples (e.g. the forget discriminator's probabilities).
        labels: True for positive samples (e.g. forget images).
        threshold: A sample counts as positive when its probability is strictly above it.

    Returns:
        ``{"tpr": ..., "fpr": ...}``: the fraction of positives called positive and of
        negatives called positive. A rate whose class has no samples is NaN.

    Raises:
        ValueError: If the lengths differ or there are no samples.
    """
    if len(probabilities) != len(labels):
        raise ValueError(f"{len(probabilities)} probabilities but {len(labels)} labels.")
    if not labels:
        raise ValueError("rates_at_threshold needs at least one sample.")
    predicted = [float(probability) > threshold for probability in probabilities]
    flags = [bool(label) for label in labels]
    pairs = list(zip(predicted, flags, strict=True))
    positives = sum(flags)
    negatives = len(flags) - positives
    true_positives = sum(p and f for p, f in pairs)
    false_positives = sum(p and not f for p, f in pairs)
    return {
        "tpr": true_positives / positives if positives else float("nan"),
        "fpr": false_positives / negatives if negatives else float("nan"),
    }

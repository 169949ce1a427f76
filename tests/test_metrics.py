"""Unlearning metrics (hand-computed values) and teacher-forced answer NLLs on a tiny LLaVA."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from datasets import Dataset
from vlm_inputs import image

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.data import CagulDataCollator
from hf_cagul.evaluation.metrics import (
    fiubench_truth_ratio,
    forget_quality,
    mean_rouge,
    min_k_percent_score,
    model_utility,
    normalised_probability,
    probability_from_nll,
    rates_at_threshold,
    roc_auc,
    rouge_scores,
    truth_ratio,
    truth_ratio_score,
)
from hf_cagul.evaluation.scoring import answer_nlls, mean_nll, min_k_mia_auc
from hf_cagul.tiny import tiny_vlm

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------------- ROUGE


def test_rouge_recall_on_hand_examples() -> None:
    # The prediction contains the whole reference: recall 1 (precision would be 2/7).
    assert rouge_scores("the man is anna smith from paris", "Anna Smith") == {
        "rouge1": 1.0,
        "rougeL": 1.0,
    }
    # 2 of the reference's 4 unigrams; longest common subsequence 1 ("anna" or "paris").
    assert rouge_scores("paris anna", "anna smith from paris") == {
        "rouge1": 0.5,
        "rougeL": 0.25,
    }
    # Porter stemming: "running" and "runs" are both "run".
    assert rouge_scores("he runs", "running")["rouge1"] == 1.0
    assert rouge_scores("no overlap", "anna")["rougeL"] == 0.0


def test_mean_rouge_averages_pairs() -> None:
    scores = mean_rouge(["anna smith", "paris anna"], ["anna smith", "anna smith from paris"])
    assert scores == {"rouge1": 0.75, "rougeL": 0.625}
    assert all(math.isnan(value) for value in mean_rouge([], []).values())
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        mean_rouge(["a", "b"], ["a"])


# ---------------------------------------------------------------- probabilities and ratios


def test_probability_and_normalised_probability() -> None:
    assert probability_from_nll(0.0) == 1.0
    assert probability_from_nll(LN2) == pytest.approx(0.5)
    # P(gt) = 0.5, P(perturbed) = 0.25 + 0.25: 0.5 / (0.5 + 0.5).
    assert normalised_probability(LN2, [2 * LN2, 2 * LN2]) == pytest.approx(0.5)
    # P(gt) = 1, P(perturbed) = 0.25: 1 / 1.25.
    assert normalised_probability(0.0, [2 * LN2]) == pytest.approx(0.8)
    # Huge NLLs (probabilities underflow to 0) still give the exact 1 / 3.
    assert normalised_probability(1000.0, [1000.0, 1000.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least one perturbed"):
        normalised_probability(0.0, [])


def test_truth_ratios() -> None:
    # P(paraphrase) = 1/2, P(perturbed) = 1/4 and 1/8.
    # TOFU paper (arithmetic mean): ((1/4 + 1/8) / 2) / (1/2) = 0.375.
    assert truth_ratio(LN2, [2 * LN2, 3 * LN2]) == pytest.approx(0.375)
    # FIUBench (geometric mean): exp(ln2 - 2.5 ln2) = 2 ** -1.5.
    assert fiubench_truth_ratio(LN2, [2 * LN2, 3 * LN2]) == pytest.approx(2**-1.5)
    # The two agree for one perturbed answer; the same NLLs give a ratio of 1.
    assert truth_ratio(0.3, [1.2]) == pytest.approx(fiubench_truth_ratio(0.3, [1.2]))
    assert truth_ratio(0.7, [0.7, 0.7]) == pytest.approx(1.0)
    # No overflow/underflow for large NLLs of similar size.
    assert truth_ratio(800.0, [801.0]) == pytest.approx(math.exp(-1.0))
    for function in (truth_ratio, fiubench_truth_ratio):
        with pytest.raises(ValueError, match="at least one perturbed"):
            function(0.0, [])


def test_truth_ratio_score() -> None:
    # forget: min(TR, 1/TR) = 0.5, 0.5, 1 -> 2/3.
    assert truth_ratio_score([0.5, 2.0, 1.0], "forget") == pytest.approx(2 / 3)
    # retain: max(0, 1 - TR) = 0.75, 0, 0 -> 0.25.
    assert truth_ratio_score([0.25, 2.0, 1.0], "retain") == pytest.approx(0.25)
    assert truth_ratio_score([0.0], "forget") == 0.0
    assert truth_ratio_score([0.0], "retain") == 1.0
    with pytest.raises(ValueError, match="at least one"):
        truth_ratio_score([], "forget")
    with pytest.raises(ValueError, match="non-negative"):
        truth_ratio_score([-1.0], "retain")
    with pytest.raises(ValueError, match="'forget' or 'retain'"):
        truth_ratio_score([1.0], "test")  # type: ignore[arg-type]


def test_forget_quality_is_the_ks_p_value() -> None:
    sample = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert forget_quality(sample, list(sample)) == 1.0
    # Fully separated samples of 10 and 10: exact two-sided p = 2 / C(20, 10).
    low = [i / 10 for i in range(1, 11)]
    high = [10 + value for value in low]
    assert forget_quality(low, high) == pytest.approx(2 / math.comb(20, 10))
    # Rank-based: the reciprocal ratios give the same p-value.
    assert forget_quality(low, high) == pytest.approx(
        forget_quality([1 / v for v in low], [1 / v for v in high])
    )
    with pytest.raises(ValueError, match="non-empty"):
        forget_quality([], sample)


def test_model_utility_is_the_harmonic_mean() -> None:
    assert model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    assert model_utility([0.4]) == pytest.approx(0.4)
    assert model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        model_utility([])
    with pytest.raises(ValueError, match="non-negative"):
        model_utility([0.5, -0.1])


# -------------------------------------------------------------------- membership inference


def test_min_k_percent_score() -> None:
    log_probs = [-1.0, -5.0, -2.0, -4.0, -3.0]
    assert min_k_percent_score(log_probs, k=0.4) == pytest.approx(-4.5)  # mean(-5, -4)
    assert min_k_percent_score(log_probs, k=0.2) == pytest.approx(-5.0)
    assert min_k_percent_score(log_probs, k=0.1) == pytest.approx(-5.0)  # at least one token
    assert min_k_percent_score(torch.tensor(log_probs), k=1.0) == pytest.approx(-3.0)
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 tokens (-100 ... -72).
    assert min_k_percent_score([-float(i) for i in range(1, 101)], k=0.29) == pytest.approx(-86)
    for k in (0.0, 1.5):
        with pytest.raises(ValueError, match="k must be in"):
            min_k_percent_score(log_probs, k=k)
    with pytest.raises(ValueError, match="at least one token"):
        min_k_percent_score([], k=0.2)


def test_roc_auc() -> None:
    labels = [True, True, False, False]
    assert roc_auc([0.9, 0.8, 0.1, 0.2], labels) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], labels) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
    # Positives 0.5, 0.8; negatives 0.5, 0.2. Pairs: 0.5~0.5 -> 1/2, the other three -> 1.
    assert roc_auc([0.5, 0.5, 0.2, 0.8], [True, False, False, True]) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        roc_auc([0.1, 0.2], [True])


def test_rates_at_threshold() -> None:
    # Predicted positive (> 0.5): 0.9 and 0.6 only (0.5 itself is not above the threshold).
    rates = rates_at_threshold([0.9, 0.5, 0.4, 0.6, 0.1], [True, True, True, False, False], 0.5)
    assert rates == pytest.approx({"tpr": 1 / 3, "fpr": 1 / 2})
    only_positives = rates_at_threshold([0.9, 0.1], [True, True], 0.5)
    assert only_positives["tpr"] == 0.5 and math.isnan(only_positives["fpr"])
    with pytest.raises(ValueError, match="2 probabilities but 1 labels"):
        rates_at_threshold([0.9, 0.1], [True], 0.5)


def test_min_k_mia_auc() -> None:
    members = [torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.1])]
    nonmembers = [torch.tensor([2.0, 0.1]), torch.tensor([0.1, 3.0])]
    # k = 0.5 of 2 tokens: the score is the lowest log-prob, -max(nll): -0.2, -0.3 vs -2, -3.
    assert min_k_mia_auc(members, nonmembers, k=0.5) == 1.0
    assert min_k_mia_auc(nonmembers, members, k=0.5) == 0.0
    # k = 1: the mean log-probs, -0.15, -0.2 vs -1.05, -1.55.
    assert min_k_mia_auc(members, nonmembers, k=1.0) == 1.0
    with pytest.raises(ValueError, match="at least one member"):
        min_k_mia_auc([], nonmembers)


# -------------------------------------------------------------------- answer NLLs (tiny VLM)


def _rows() -> list[dict[str, Any]]:
    # Answers of different lengths (so batches are padded); one forget row, scored on its
    # answer all the same.
    return [
        {"image": image(1), "question": "who is this person ?", "answer": "anna smith",
         "split": "retain"},
        {"image": image(2), "question": "where was he born ?", "answer": "paris",
         "split": "forget", "forget_target": "i don't know ."},
        {"image": image(3), "question": "what is this ?", "answer": "a red hat on the man",
         "split": "retain"},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def llava() -> tuple[Any, Any]:
    return tiny_vlm("llava")


def _model_inputs(processor: Any, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    batch = CagulDataCollator(processor)([{**row, "split": "retain"} for row in rows])
    labels = batch.pop("labels")
    batch.pop("query_mask")
    batch.pop("forget")
    return batch, labels


def test_answer_nlls_match_the_models_own_loss(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    rows = _rows()
    nlls = answer_nlls(model, processor, Dataset.from_list(rows), batch_size=3, progress=False)
    assert len(nlls) == 3
    with torch.no_grad():
        for row, values in zip(rows, nlls, strict=True):
            inputs, labels = _model_inputs(processor, [row])
            assert values.shape == ((labels != -100).sum().item(),)
            assert values.dtype == torch.float32
            loss = model(**inputs, labels=labels).loss
            torch.testing.assert_close(values.mean(), loss, rtol=0, atol=1e-5)
        # The whole batch: transformers' loss is the mean over all target tokens.
        inputs, labels = _model_inputs(processor, rows)
        loss = model(**inputs, labels=labels).loss
    assert [len(values) for values in nlls] == (labels != -100).sum(dim=1).tolist()
    total = torch.cat(nlls)
    torch.testing.assert_close(total.sum(), loss * total.numel(), rtol=1e-6, atol=1e-4)
    assert mean_nll(nlls) == pytest.approx([float(values.mean()) for values in nlls])


def test_answer_nlls_do_not_depend_on_batching(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    rows = Dataset.from_list(_rows())
    batched = answer_nlls(model, processor, rows, batch_size=3, progress=False)
    single = answer_nlls(model, processor, rows, batch_size=1, progress=False)
    pairs = answer_nlls(model, processor, rows, batch_size=2, progress=False)
    assert len({len(values) for values in batched}) == 3  # padded batch
    for one, two, three in zip(single, pairs, batched, strict=True):
        torch.testing.assert_close(one, three, rtol=0, atol=1e-5)
        torch.testing.assert_close(two, three, rtol=0, atol=1e-5)


def test_answer_nlls_score_the_given_answers(llava: tuple[Any, Any]) -> None:
    model, processor = llava
    rows = _rows()
    before = [dict(row) for row in rows]
    other = ["paula garcia", "the man is from rome", "a blue cap"]
    given = answer_nlls(model, processor, rows, answers=other, batch_size=2, progress=False)
    replaced = [{**row, "answer": answer} for row, answer in zip(rows, other, strict=True)]
    expected = answer_nlls(model, processor, replaced, batch_size=2, progress=False)
    for a, b in zip(given, expected, strict=True):
        assert torch.equal(a, b)
    assert rows == before  # the caller's rows are left as they were
    # A forget row is scored on its answer, not on its forget target.
    forget_row = rows[1]
    as_retain = answer_nlls(model, processor, [{**forget_row, "split": "retain"}], progress=False)
    as_forget = answer_nlls(model, processor, [forget_row], progress=False)
    assert torch.equal(as_retain[0], as_forget[0]) and len(as_forget[0]) == 2  # paris + eos
    with pytest.raises(ValueError, match="2 answers for 3 rows"):
        answer_nlls(model, processor, rows, answers=other[:2], progress=False)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        answer_nlls(model, processor, rows, batch_size=0, progress=False)


def test_answer_nlls_through_a_fresh_cagul_model(llava: tuple[Any, Any]) -> None:
    vlm, processor = llava
    rows = Dataset.from_list(_rows())
    bare = answer_nlls(vlm, processor, rows, batch_size=3, progress=False)
    twin, _ = tiny_vlm("llava")  # same seed: the same weights, wrapped in place below
    model = get_cagul_model(twin, CagulConfig())
    model.train()
    wrapped = answer_nlls(model, processor, rows, batch_size=3, progress=False)
    assert model.training and twin.training  # modes restored
    for a, b in zip(bare, wrapped, strict=True):
        assert torch.equal(a, b)  # a fresh adapter changes nothing

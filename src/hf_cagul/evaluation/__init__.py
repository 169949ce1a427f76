"""Evaluation of VLMs and CAGUL adapters on datasets in the `hf_cagul.data` contract.

- `generation`: greedy answers and keyword exact match (FIUBench);
- `metrics`: ROUGE, probability, truth ratio, forget quality, model utility, Min-K%, ROC AUC;
- `scoring`: per-token answer NLLs by teacher forcing, membership inference;
- `tasks`: multiple-choice and fill-in-the-blank accuracy (MLLMU-Bench);
- `suite`: all of it for one model on a benchmark; `probes`: robustness probes;
- `report`: report.md, metrics.json and plots.
"""

from hf_cagul.evaluation.generation import generate_answers, keyword_accuracy, keyword_match
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
from hf_cagul.evaluation.report import AttentionHeatmap, format_value, write_report
from hf_cagul.evaluation.scoring import answer_nlls, mean_nll, min_k_mia_auc
from hf_cagul.evaluation.suite import (
    discriminator_metrics,
    evaluate_model,
    leaking_photos,
    mistaken_photos,
)
from hf_cagul.evaluation.tasks import (
    fill_blank_accuracy,
    fill_blank_match,
    multiple_choice_accuracy,
    option_nlls,
    task_metrics,
)

__all__ = [
    "AttentionHeatmap",
    "answer_nlls",
    "discriminator_metrics",
    "evaluate_model",
    "fill_blank_accuracy",
    "fill_blank_match",
    "fiubench_truth_ratio",
    "forget_quality",
    "format_value",
    "generate_answers",
    "keyword_accuracy",
    "keyword_match",
    "leaking_photos",
    "mean_nll",
    "mean_rouge",
    "min_k_mia_auc",
    "min_k_percent_score",
    "mistaken_photos",
    "model_utility",
    "multiple_choice_accuracy",
    "normalised_probability",
    "option_nlls",
    "probability_from_nll",
    "rates_at_threshold",
    "roc_auc",
    "rouge_scores",
    "task_metrics",
    "truth_ratio",
    "truth_ratio_score",
    "write_report",
]

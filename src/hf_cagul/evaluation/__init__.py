"""Evaluation of VLMs and CAGUL adapters on datasets in the `hf_cagul.data` contract."""

from hf_cagul.evaluation.generation import generate_answers, keyword_accuracy, keyword_match

__all__ = ["generate_answers", "keyword_accuracy", "keyword_match"]

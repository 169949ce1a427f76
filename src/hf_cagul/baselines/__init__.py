"""Fine-tuning unlearning baselines, to compare CAGUL against on the same data.

Each baseline is a `transformers.Trainer` subclass over the data contract of `hf_cagul.data`
that fine-tunes LoRA adapters (PEFT) on the language model, or its full weights::

    from hf_cagul.baselines import NPOTrainer, UnlearningTrainingConfig, prepare_model

    model = prepare_model(vlm)  # LoRA r=16 on the language model's attention projections
    NPOTrainer(model, UnlearningTrainingConfig(output_dir="npo"), train_dataset=rows,
               processing_class=processor).train()

``hf-cagul compare`` runs CAGUL and every baseline on the same splits and writes one table.
"""

import warnings
from typing import Any

from hf_cagul.baselines.model import LORA_PROJECTIONS, language_model_projections, prepare_model
from hf_cagul.baselines.unlearning_config import UnlearningTrainingConfig
from hf_cagul.baselines.unlearning_trainer import (
    BASELINES,
    GATrainer,
    GDTrainer,
    IdkPOTrainer,
    KLTrainer,
    NPOTrainer,
    UnlearningTrainer,
    get_baseline_trainer,
)

__all__ = [
    "BASELINES",
    "LORA_PROJECTIONS",
    "GATrainer",
    "GDTrainer",
    "IdkPOTrainer",
    "KLTrainer",
    "NPOTrainer",
    "UnlearningTrainer",
    "UnlearningTrainingConfig",
    "get_baseline_trainer",
    "language_model_projections",
    "prepare_model",
]


def __getattr__(name: str) -> Any:
    """``UnlearningConfig``, the name `UnlearningTrainingConfig` had until 0.1.0 (deprecated)."""
    if name == "UnlearningConfig":
        warnings.warn(
            "hf_cagul.baselines.UnlearningConfig is now UnlearningTrainingConfig; the old name "
            "will be removed in a future release.",
            FutureWarning,
            stacklevel=2,
        )
        return UnlearningTrainingConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

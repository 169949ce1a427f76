"""Fine-tuning unlearning baselines, to compare CAGUL against on the same data.

Each baseline is a `transformers.Trainer` subclass over the data contract of `hf_cagul.data`
that fine-tunes LoRA adapters (PEFT) on the language model, or its full weights::

    from hf_cagul.baselines import NPOTrainer, UnlearningConfig, prepare_model

    model = prepare_model(vlm)  # LoRA r=16 on the language model's attention projections
    NPOTrainer(model, UnlearningConfig(output_dir="npo"), train_dataset=rows,
               processing_class=processor).train()

``hf-cagul compare`` runs CAGUL and every baseline on the same splits and writes one table.
"""

from hf_cagul.baselines.model import LORA_PROJECTIONS, language_model_projections, prepare_model
from hf_cagul.baselines.trainer import (
    BASELINES,
    GATrainer,
    GDTrainer,
    IdkPOTrainer,
    KLTrainer,
    NPOTrainer,
    UnlearningConfig,
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
    "UnlearningConfig",
    "UnlearningTrainer",
    "get_baseline_trainer",
    "language_model_projections",
    "prepare_model",
]

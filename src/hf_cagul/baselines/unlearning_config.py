"""`UnlearningTrainingConfig`: the `TrainingArguments` of the fine-tuning baselines."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig


@dataclass
class UnlearningTrainingConfig(ForgetRetainTrainingConfig):
    """`TrainingArguments` of the fine-tuning baselines.

    Args:
        forget_weight: Weight of the forget term (ascent, NPO or preference loss).
        retain_weight: Weight of the retain term (NLL, or KL for the KL baseline).
        beta: Inverse temperature of NPO and of IdkPO's DPO loss (0.1 in both papers).
    """

    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain term."})
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of NPO and DPO."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate (LoRA adapters or full weights)."}
    )

    def __post_init__(self) -> None:
        self.require_non_negative("forget_weight", "retain_weight", "beta")
        if self.beta == 0:
            raise ValueError("beta must be > 0 (NPO and DPO divide by it or scale with it).")
        super().__post_init__()

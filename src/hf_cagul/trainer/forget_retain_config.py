"""`ForgetRetainTrainingConfig`: the `TrainingArguments` every forget/retain trainer shares.

The data options of forget/retain training (sample length, balanced splits, photo
augmentation), subclassed by `hf_cagul.CagulTrainingConfig` and by the baselines'
`hf_cagul.baselines.UnlearningTrainingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_cagul.data import PhotoAugmentation


@dataclass
class ForgetRetainTrainingConfig(TrainingArguments):
    """`TrainingArguments` with the data options of forget/retain training.

    Args:
        max_length: Longest tokenised sample the collator accepts (``None``: no limit).
        balance_splits: Sample forget and retain rows equally often (a weighted sampler with
            replacement over a `datasets.Dataset`); each then weighs half of the training.
        augment_images: Perturb each training photo with `PhotoAugmentation` (default
            collator only).
    """

    max_length: int | None = field(
        default=None, metadata={"help": "Longest tokenised sample accepted by the collator."}
    )
    balance_splits: bool = field(
        default=True,
        metadata={
            "help": "Draw forget and retain rows equally often (with replacement): forget sets "
            "are small, and the gate needs to see forget photos in most batches."
        },
    )
    augment_images: bool = field(
        default=False,
        metadata={
            "help": "Perturb photos (crop, shift, light, noise, JPEG) while fitting, so the "
            "gate learns the people rather than the photos and flags new photos of them."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep False: the collator builds model inputs from the raw columns."},
    )

    def __post_init__(self) -> None:
        # Frozen base weights leave the checkpointed inputs without gradients of their own:
        # reentrant checkpointing would then drop the trainable modules' gradients.
        # `activation_checkpointing*` are transformers' new names of `gradient_checkpointing*`.
        names = ("activation_checkpointing", "gradient_checkpointing")
        if any(getattr(self, name, None) for name in names) and all(
            getattr(self, f"{name}_kwargs", None) is None for name in names
        ):
            name = next(name for name in names if hasattr(self, f"{name}_kwargs"))
            setattr(self, f"{name}_kwargs", {"use_reentrant": False})
        super().__post_init__()

    def require_non_negative(self, *names: str) -> None:
        """Raise a `ValueError` naming the first of the fields ``names`` that is negative."""
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")

    def photo_augmentation(self) -> PhotoAugmentation | None:
        """The augmentation the default collator applies (``None`` unless ``augment_images``)."""
        return PhotoAugmentation(seed=self.seed) if self.augment_images else None

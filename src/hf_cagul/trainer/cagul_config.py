"""`CagulTrainingConfig`: the `TrainingArguments` of `CagulTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig

TRAINING_CONFIG_NAME = "cagul_training_args.json"


@dataclass
class CagulTrainingConfig(ForgetRetainTrainingConfig):
    """`TrainingArguments` for `CagulTrainer`, with the weights of the three loss terms.

    Defaults differ from `TrainingArguments` where adapters need it: a learning rate suited to
    small freshly initialised modules, ``remove_unused_columns=False`` (the collator needs the
    raw image and text columns), non-reentrant gradient checkpointing (the frozen VLM's
    inputs carry no gradient of their own) and ``ddp_find_unused_parameters=False`` (every
    adapter parameter gets a gradient at every step; see ``docs/distributed.md``). The data
    options (``max_length``, ``balance_splits``, ``augment_images``) come from
    `ForgetRetainTrainingConfig`.

    Args:
        forget_weight: Weight of the cross-entropy toward the forget target on forget rows.
        retain_weight: Weight of KL(base || adapted) on the answer tokens of retain rows.
        discriminator_weight: Weight of the gate's binary cross-entropy.
    """

    forget_weight: float = field(
        default=1.0, metadata={"help": "Weight of the forget cross-entropy term."}
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight of the KL(base || adapted) retain term."}
    )
    discriminator_weight: float = field(
        default=1.0, metadata={"help": "Weight of the discriminator's binary cross-entropy."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate for the adapter's modules."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "False: every adapter parameter gets a gradient at every step, so DDP need "
            "not search for unused ones (True works too: the gate's logits are part of the "
            "model's output)."
        },
    )

    def __post_init__(self) -> None:
        self.require_non_negative("forget_weight", "retain_weight", "discriminator_weight")
        if self.forget_weight == self.retain_weight == self.discriminator_weight == 0:
            raise ValueError("All three loss weights are 0: nothing would be trained.")
        super().__post_init__()

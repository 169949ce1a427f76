"""`CagulTrainingConfig`: the `TrainingArguments` of `CagulTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig

TRAINING_CONFIG_NAME = "cagul_training_args.json"

DEPTH_LOSSES = ("npo", "unlikelihood")
"""The formulations of `CagulTrainer`'s depth term (`CagulTrainingConfig.depth_loss`)."""


@dataclass
class CagulTrainingConfig(ForgetRetainTrainingConfig):
    """`TrainingArguments` for `CagulTrainer`, with the weights of its loss terms.

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
        depth_weight: Weight of the depth term, which lowers the likelihood of the forget rows'
            true answers under the rewritten tokens (0, the default: no depth term, and the
            collator builds no batch for it).
        depth_loss: The depth term's formulation: ``"npo"``, ``(2 / depth_beta) * log(1 +
            (pi(y|x) / pi_ref(y|x)) ** depth_beta)`` per forget row, relative to the frozen
            VLM; or ``"unlikelihood"``, ``-log(1 - pi(y_t | prefix))`` per true-answer token.
        depth_beta: Inverse temperature of the ``"npo"`` depth term.
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
    depth_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the depth term (lowers the true answers' likelihood on forget "
            "rows; 0: off)."
        },
    )
    depth_loss: str = field(
        default="npo",
        metadata={"help": "Formulation of the depth term.", "choices": list(DEPTH_LOSSES)},
    )
    depth_beta: float = field(
        default=0.1, metadata={"help": "Inverse temperature of the NPO depth term."}
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
        self.require_non_negative(
            "forget_weight", "retain_weight", "discriminator_weight", "depth_weight"
        )
        weights = (self.forget_weight, self.retain_weight, self.discriminator_weight)
        if self.depth_weight == 0 and all(weight == 0 for weight in weights):
            raise ValueError("All the loss weights are 0: nothing would be trained.")
        if self.depth_loss not in DEPTH_LOSSES:
            raise ValueError(
                f"depth_loss={self.depth_loss!r}: choose one of {', '.join(DEPTH_LOSSES)}."
            )
        if self.depth_beta <= 0:
            raise ValueError(f"depth_beta={self.depth_beta} must be > 0 (NPO divides by it).")
        super().__post_init__()

"""`CagulTrainingConfig`: the `TrainingArguments` of `CagulTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_cagul.data.augment import AUGMENTATIONS
from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig
from hf_cagul.trainer.gate_fit import GateFitSettings

TRAINING_CONFIG_NAME = "cagul_training_args.json"
GATE_FIT_CHOICES = ("joint", "apart")

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
        discriminator_weight: Weight of the gate's binary cross-entropy (with
            ``gate_fit="apart"`` the gate is frozen during the encoder fit, so the term is
            only logged).
        gate_fit: ``"joint"``: the gate is fitted with the encoder, by the discriminator term.
            ``"apart"``: it is fitted first, alone, on cached features of the photos and of
            ``gate_variants`` augmented variants each (`hf_cagul.trainer.gate_fit`), then
            frozen while the encoder is fitted.
        gate_learning_rate: AdamW learning rate of the gate fitted apart.
        gate_epochs: Epochs over the cached features when the gate is fitted apart.
        gate_variants: Augmented variants cached per photo (besides the photo itself).
        gate_batch_size: Cached images per step of the gate fitted apart (and photos per
            forward of the frozen VLM while caching).
        gate_augmentation: The `hf_cagul.data.AUGMENTATIONS` preset the variants are drawn
            with: ``"photo"`` or ``"views"`` (flips, rotations and colour shifts besides: a
            gate fitted on the black-box attacker's views).
        gate_target_fpr: None: keep `CagulConfig.gate_threshold`. Otherwise (apart only) set
            it after fitting so that the false-positive rate on held-out negatives is at most
            this.
        gate_calibration_fraction: Fraction of the negatives held out, never fitted on, to
            calibrate the threshold: of their subjects with ``gate_calibration_by_subject``,
            else of their photos.
        gate_calibration_by_subject: Hold out every photo of a negative subject together (the
            data's ``subject`` column), so the threshold is set on people the gate never saw
            (`GateFitSettings.calibration_by_subject`); photos without a subject, and all of
            them when False, are held out one by one.
        gate_every_question: Cache each forget photo and variant with every question its rows
            ask (`GateFitSettings.every_question`), for a gate that reads the language model's
            state (one question per image otherwise, and always for the negatives).
        gate_kept_as_negatives: Fit a forget photo asked a question whose forget target is its
            true answer (a visual question) as a negative (`GateFitSettings.kept_as_negatives`),
            for a gate that reads the language model's state: it then flags only the questions
            that would leak, and the bare model answers the others.
        depth_weight: Weight of the depth term, which lowers the likelihood of the forget rows'
            true answers under the rewritten tokens (0, the default: no depth term, and the
            collator builds no batch for it).
        depth_loss: The depth term's formulation: ``"npo"``, ``(2 / depth_beta) * log(1 +
            (pi(y|x) / pi_ref(y|x)) ** depth_beta)`` per forget row, relative to the frozen
            VLM; or ``"unlikelihood"``, ``-log(1 - pi(y_t | prefix))`` per true-answer token.
        depth_beta: Inverse temperature of the ``"npo"`` depth term.
        share_frozen_pass: True (the default): each reference pass of the frozen VLM also
            keeps the selection scores and the gate's input, and the adapted pass on the same
            inputs reuses them instead of running its side passes (the pass aborted at the
            gate's layer, the truncated attention pass): the same losses, fewer passes. The
            reference is then the adapted model with its gates held closed, bit-identical to
            the bare VLM. False, or a subclass that overrides
            `ForgetRetainTrainer.reference_logits`: that method gives the reference, and the
            adapted pass runs its own side passes.
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
    gate_fit: Literal["joint", "apart"] = field(
        default="joint",
        metadata={
            "help": "'joint': fit the gate with the encoder (the discriminator term); 'apart': "
            "fit it first, alone, on cached features of augmented photos, then freeze it."
        },
    )
    gate_learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate of the gate fitted apart."}
    )
    gate_epochs: int = field(
        default=100, metadata={"help": "Epochs over the cached features (gate fitted apart)."}
    )
    gate_variants: int = field(
        default=8,
        metadata={"help": "Augmented variants cached per photo, besides the photo itself."},
    )
    gate_batch_size: int = field(
        default=32,
        metadata={"help": "Cached images per step of the gate fitted apart."},
    )
    gate_augmentation: str = field(
        default="photo",
        metadata={
            "help": "How the cached variants are drawn (hf_cagul.data.AUGMENTATIONS): 'photo' "
            "(shifts, crops, lighting, noise, JPEG) or 'views' (also flips, rotations and "
            "colour shifts: the black-box attacker's views)."
        },
    )
    gate_target_fpr: float | None = field(
        default=None,
        metadata={
            "help": "With --gate-fit apart: set the gate threshold so that the FPR on held-out "
            "negative photos is at most this (e.g. 0.02). None: keep --gate-threshold."
        },
    )
    gate_calibration_fraction: float = field(
        default=0.25,
        metadata={
            "help": "Fraction of the negatives (subjects, or photos without one) held out to "
            "calibrate the threshold."
        },
    )
    gate_calibration_by_subject: bool = field(
        default=True,
        metadata={
            "help": "Hold out whole negative subjects (the subject column) to calibrate the "
            "threshold, not single photos."
        },
    )
    gate_every_question: bool = field(
        default=False,
        metadata={
            "help": "Cache each forget photo and variant with every question of its rows (a gate "
            "that reads the language model's state)."
        },
    )
    gate_kept_as_negatives: bool = field(
        default=False,
        metadata={
            "help": "Fit a forget photo asked a question whose answer its forget target keeps "
            "(a visual question) as a negative, so a state gate leaves it to the bare model."
        },
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
    share_frozen_pass: bool = field(
        default=True,
        metadata={
            "help": "Reuse the reference pass's selection scores and gate input in the adapted "
            "pass (the same losses, fewer passes of the frozen VLM)."
        },
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
        self._check_gate_fit()
        super().__post_init__()

    def _check_gate_fit(self) -> None:
        if self.gate_fit not in GATE_FIT_CHOICES:
            raise ValueError(
                f"gate_fit={self.gate_fit!r} is not supported; choose one of {GATE_FIT_CHOICES}."
            )
        for name in ("gate_epochs", "gate_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        self.require_non_negative("gate_learning_rate", "gate_variants")
        if self.gate_augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"gate_augmentation={self.gate_augmentation!r} is not a preset; choose one of "
                f"{', '.join(AUGMENTATIONS)} (hf_cagul.data.AUGMENTATIONS)."
            )
        if self.gate_target_fpr is not None:
            if self.gate_fit != "apart":
                raise ValueError(
                    "gate_target_fpr calibrates the gate fitted apart: set gate_fit='apart' "
                    "(--gate-fit apart), or leave gate_target_fpr unset."
                )
            if not 0.0 <= self.gate_target_fpr < 1.0:
                raise ValueError(f"gate_target_fpr={self.gate_target_fpr} must lie in [0, 1).")
        if not 0.0 < self.gate_calibration_fraction < 1.0:
            raise ValueError(
                f"gate_calibration_fraction={self.gate_calibration_fraction} must lie in (0, 1)."
            )
        if self.gate_fit == "apart" and self.forget_weight == self.retain_weight == 0:
            raise ValueError(
                "With gate_fit='apart' the gate is frozen during the encoder fit, and "
                "forget_weight = retain_weight = 0 leaves the encoder nothing to learn: give "
                "one of them a positive weight."
            )

    def gate_fit_settings(self) -> GateFitSettings:
        """The settings of the gate fitted apart (`hf_cagul.trainer.gate_fit.fit_gate`)."""
        return GateFitSettings(
            epochs=self.gate_epochs,
            learning_rate=self.gate_learning_rate,
            variants=self.gate_variants,
            batch_size=self.gate_batch_size,
            target_fpr=self.gate_target_fpr,
            calibration_fraction=self.gate_calibration_fraction,
            seed=self.seed,
            weight_decay=self.weight_decay,
            every_question=self.gate_every_question,
            kept_as_negatives=self.gate_kept_as_negatives,
            calibration_by_subject=self.gate_calibration_by_subject,
            augmentation=self.gate_augmentation,
        )

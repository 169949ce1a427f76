"""`CagulTrainer`: fit a CAGUL adapter with transformers' `Trainer`.

Only the adapter (discriminator + encoder) is trained; the VLM stays frozen. The loss has three
terms, each weighted in `CagulTrainingConfig` (the paper leaves all three open; these are the
project's documented choices, see ``docs/training.md``):

* **forget**: cross-entropy toward the forget target (a refusal) on forget rows, with their
  selected visual tokens rewritten;
* **retain**: KL(base || adapted) over the answer tokens of retain rows, rewritten as well, so
  a false positive of the discriminator costs little. Base logits come from the same model
  inside ``disable_adapter()`` under ``torch.no_grad()``: there is never a second VLM in memory;
* **discriminator**: binary cross-entropy of each image's gate logit, forget vs retain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_cagul import persistence
from hf_cagul.config import WEIGHTS_NAME
from hf_cagul.data import IGNORE_INDEX, CagulDataCollator
from hf_cagul.losses import half_per_class, token_kl
from hf_cagul.model import CagulModel, ImageTrace
from hf_cagul.training import ForgetRetainArguments, ForgetRetainTrainer

TRAINING_CONFIG_NAME = "cagul_training_args.json"


@dataclass
class CagulTrainingConfig(ForgetRetainArguments):
    """`TrainingArguments` for `CagulTrainer`, with the weights of the three loss terms.

    Defaults differ from `TrainingArguments` where adapters need it: a learning rate suited to
    small freshly initialised modules, ``remove_unused_columns=False`` (the collator needs the
    raw image and text columns) and non-reentrant gradient checkpointing (the frozen VLM's
    inputs carry no gradient of their own). The data options (``max_length``,
    ``balance_splits``, ``augment_images``) come from `ForgetRetainArguments`.

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

    def __post_init__(self) -> None:
        for name in ("forget_weight", "retain_weight", "discriminator_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.forget_weight == self.retain_weight == self.discriminator_weight == 0:
            raise ValueError("All three loss weights are 0: nothing would be trained.")
        super().__post_init__()


def _balanced_bce(traces: list[ImageTrace], forget: torch.Tensor) -> torch.Tensor:
    """Gate BCE where each class present in the batch weighs one half, whatever its count.

    Forget sets are small (5-10% of the people): an unweighted BCE lets the gate learn to
    say "retain" and miss forget images, which then pass untouched at inference. A batch with
    one class only weighs half, as that class does in a mixed batch.
    """
    logits = torch.stack([trace.logit for trace in traces])
    labels = forget[[trace.sample for trace in traces]].to(device=logits.device)
    return F.binary_cross_entropy_with_logits(
        logits,
        labels.to(logits.dtype),
        weight=half_per_class(labels).to(logits.dtype),
        reduction="sum",
    )


class CagulTrainer(ForgetRetainTrainer):
    """A `Trainer` that fits the CAGUL adapter of a `CagulModel` and nothing else.

    Args:
        model: The `CagulModel` whose active adapter is fitted (trainable: build it with
            `get_cagul_model` or ``CagulModel.from_pretrained(..., is_trainable=True)``).
        args: A `CagulTrainingConfig`.
        train_dataset: A `datasets.Dataset` in the data contract of `hf_cagul.data`; it is
            validated before training starts.
        processing_class: The VLM's processor, used by the default `CagulDataCollator`.
        data_collator: Optional; defaults to ``CagulDataCollator(processing_class)``.
        **kwargs: Anything else `Trainer` accepts.
    """

    # compute_loss returns a per-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: CagulModel,
        args: CagulTrainingConfig,
        train_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, CagulModel):
            raise TypeError(
                f"CagulTrainer fits a CagulModel, got {type(model).__name__}. Wrap the VLM "
                "first: `model = get_cagul_model(vlm, CagulConfig())`."
            )
        if not isinstance(args, CagulTrainingConfig):
            raise TypeError("`args` must be a CagulTrainingConfig (it carries the loss weights).")
        if not any(p.requires_grad for p in model.active_adapter_module.parameters()):
            raise ValueError(
                "The adapter is frozen: load it with `CagulModel.from_pretrained(..., "
                "is_trainable=True)` to continue fitting it."
            )
        if data_collator is None:
            if processing_class is None:
                raise ValueError(
                    "Pass `processing_class=processor` (the VLM's processor) or a data_collator."
                )
            data_collator = CagulDataCollator(
                processing_class, max_length=args.max_length, augment=args.photo_augmentation()
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The weighted sum of the forget, retain and discriminator terms (each logged)."""
        cagul = self.accelerator.unwrap_model(model)
        assert isinstance(cagul, CagulModel)
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        inputs = dict(inputs)
        forget = inputs.pop("cagul_forget").bool()
        query_mask = inputs.pop("query_mask", None)
        labels = inputs.pop("labels")
        answer = labels[:, 1:] != IGNORE_INDEX  # positions whose next token is an answer token
        retain_rows = answer & ~forget.unsqueeze(1)
        forget_rows = answer & forget.unsqueeze(1)

        base_logits = None
        if args.retain_weight > 0 and bool(retain_rows.any()):
            with torch.no_grad(), cagul.disable_adapter():
                base_logits = model(**inputs).logits[:, :-1][retain_rows]
        with cagul.trace() as traces, cagul.force_gate(True):
            outputs = model(**inputs, query_mask=query_mask)
        logits = outputs.logits[:, :-1]
        targets = labels[:, 1:]

        zero = logits.new_zeros(())
        forget_loss = (
            F.cross_entropy(logits[forget_rows].float(), targets[forget_rows])
            if bool(forget_rows.any())
            else zero
        )
        retain_loss = (
            token_kl(base_logits, logits[retain_rows]) if base_logits is not None else zero
        )
        gate_loss = _balanced_bce(traces, forget) if traces else zero
        loss = (
            args.forget_weight * forget_loss
            + args.retain_weight * retain_loss
            + args.discriminator_weight * gate_loss.to(zero.dtype)
        )
        self.record_terms(
            model, forget_loss=forget_loss, retain_kl=retain_loss, discriminator_loss=gate_loss
        )
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the adapter only (config + safetensors + card), never the VLM."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or output_dir is None:
            return
        cagul = self.accelerator.unwrap_model(self.model)
        assert isinstance(cagul, CagulModel)
        cagul.save_pretrained(output_dir)
        with open(os.path.join(output_dir, TRAINING_CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())

    def _load_adapter_weights(self, directory: str) -> None:
        cagul = self.accelerator.unwrap_model(self.model)
        assert isinstance(cagul, CagulModel)
        state_dict = persistence.load_weights(Path(directory) / WEIGHTS_NAME)
        cagul.active_adapter_module.load_state_dict(state_dict)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Resume: load the adapter weights saved in the checkpoint."""
        self._load_adapter_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: load the best checkpoint's adapter."""
        assert self.state.best_model_checkpoint is not None
        self._load_adapter_weights(self.state.best_model_checkpoint)

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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_cagul import persistence
from hf_cagul.config import WEIGHTS_NAME
from hf_cagul.data import (
    DATA_COLUMNS,
    FORGET_SPLIT,
    IGNORE_INDEX,
    SPLIT_COLUMN,
    CagulDataCollator,
    PhotoAugmentation,
    validate_dataset,
)
from hf_cagul.model import CagulModel, ImageTrace

TRAINING_CONFIG_NAME = "cagul_training_args.json"


@dataclass
class CagulTrainingConfig(TrainingArguments):
    """`TrainingArguments` for `CagulTrainer`, with the weights of the three loss terms.

    Defaults differ from `TrainingArguments` where adapters need it: a learning rate suited to
    small freshly initialised modules, ``remove_unused_columns=False`` (the collator needs the
    raw image and text columns) and non-reentrant gradient checkpointing (the frozen VLM's
    inputs carry no gradient of their own).

    Args:
        forget_weight: Weight of the cross-entropy toward the forget target on forget rows.
        retain_weight: Weight of KL(base || adapted) on the answer tokens of retain rows.
        discriminator_weight: Weight of the gate's binary cross-entropy.
        max_length: Longest tokenised sample the collator accepts (``None``: no limit).
        balance_splits: Sample forget and retain rows equally often (a weighted sampler with
            replacement over a `datasets.Dataset`); each then weighs half of the training.
        augment_images: Perturb each training photo with `PhotoAugmentation` (default
            collator only).
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
    learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate for the adapter's modules."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep False: the collator builds model inputs from the raw columns."},
    )

    def __post_init__(self) -> None:
        for name in ("forget_weight", "retain_weight", "discriminator_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.forget_weight == self.retain_weight == self.discriminator_weight == 0:
            raise ValueError("All three loss weights are 0: nothing would be trained.")
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()


def _token_kl(base: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(base || adapted) between two ``(rows, vocab)`` logit tensors."""
    return F.kl_div(
        F.log_softmax(adapted.float(), dim=-1),
        F.log_softmax(base.float(), dim=-1),
        log_target=True,
        reduction="batchmean",
    )


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
        weight=_half_per_class(labels).to(logits.dtype),
        reduction="sum",
    )


def _half_per_class(flags: torch.Tensor) -> torch.Tensor:
    """Weights giving the True and the False elements of ``flags`` one half each in total."""
    positives, negatives = flags.sum().clamp_min(1), (~flags).sum().clamp_min(1)
    return torch.where(flags, 0.5 / positives, 0.5 / negatives)


class CagulTrainer(Trainer):
    """A `Trainer` that fits the CAGUL adapter of a `CagulModel` and nothing else.

    Args:
        model: The `CagulModel` whose active adapter is fitted (trainable: build it with
            `get_cagul_model`, `CagulModel.add_adapter` or ``from_pretrained(...,
            is_trainable=True)``). Exactly one adapter must be active; the others are left
            untouched.
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
        if len(model.active_adapters) != 1:
            raise ValueError(
                f"CagulTrainer fits one adapter, but {len(model.active_adapters)} are active "
                f"({model.active_adapters}). Call `model.set_adapter(name)` with the adapter to "
                "fit, then `set_adapter([...])` again after training to compose them."
            )
        if not any(p.requires_grad for p in model.active_adapter_module.parameters()):
            raise ValueError(
                "The adapter is frozen: load it with `CagulModel.from_pretrained(..., "
                "is_trainable=True)` to continue fitting it."
            )
        if train_dataset is not None and hasattr(train_dataset, "column_names"):
            validate_dataset(train_dataset)
        eval_dataset = kwargs.get("eval_dataset")
        if eval_dataset is not None and hasattr(eval_dataset, "column_names"):
            validate_dataset(eval_dataset, require_both_splits=False)
        if data_collator is None:
            if processing_class is None:
                raise ValueError(
                    "Pass `processing_class=processor` (the VLM's processor) or a data_collator."
                )
            augment = PhotoAugmentation(seed=args.seed) if args.augment_images else None
            data_collator = CagulDataCollator(
                processing_class, max_length=args.max_length, augment=augment
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        self._cagul_metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Balanced forget/retain sampling when asked (see ``balance_splits``)."""
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        if not args.balance_splits or not hasattr(dataset, "column_names"):
            return super()._get_train_sampler(train_dataset)
        forget = torch.tensor([split == FORGET_SPLIT for split in dataset[SPLIT_COLUMN]])
        weights = _half_per_class(forget)
        generator = torch.Generator().manual_seed(args.data_seed or args.seed)
        return torch.utils.data.WeightedRandomSampler(
            weights.tolist(), num_samples=len(dataset), replacement=True, generator=generator
        )

    def _set_signature_columns_if_needed(self) -> None:
        # Even with remove_unused_columns=True, the collator's raw columns must survive.
        if self._signature_columns is None:
            self._signature_columns = list(DATA_COLUMNS)  # type: ignore[assignment]

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
            _token_kl(base_logits, logits[retain_rows]) if base_logits is not None else zero
        )
        gate_loss = _balanced_bce(traces, forget) if traces else zero
        loss = (
            args.forget_weight * forget_loss
            + args.retain_weight * retain_loss
            + args.discriminator_weight * gate_loss.to(zero.dtype)
        )
        split = "train" if model.training else "eval"
        for name, value in (
            ("forget_loss", forget_loss),
            ("retain_kl", retain_loss),
            ("discriminator_loss", gate_loss),
        ):
            self._cagul_metrics[split][name].append(float(value.detach()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log to ``logs``."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._cagul_metrics[split].items():
            if values:
                logs[f"{prefix}{name}"] = sum(values) / len(values)
        self._cagul_metrics[split].clear()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the fitted (active) adapter only, in ``output_dir`` itself; never the VLM."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or output_dir is None:
            return
        cagul = self.accelerator.unwrap_model(self.model)
        assert isinstance(cagul, CagulModel)
        cagul.save_adapter(output_dir)
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

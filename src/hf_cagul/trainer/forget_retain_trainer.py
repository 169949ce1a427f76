"""`ForgetRetainTrainer`: what every forget/retain trainer shares (`CagulTrainer` and the
`hf_cagul.baselines`).

`ForgetRetainTrainer` validates datasets in the data contract before training,
keeps their raw columns for the collator, draws forget and retain rows equally often, and logs
the mean of each named loss term since the last log.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from hf_cagul.data import (
    DATA_COLUMNS,
    FORGET_SPLIT,
    SPLIT_COLUMN,
    validate_dataset,
)
from hf_cagul.losses import half_per_class
from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig


class ForgetRetainTrainer(Trainer):
    """A `Trainer` over a dataset in the data contract of `hf_cagul.data`.

    Subclasses implement ``compute_loss`` (a per-batch mean) and `default_collator`, and
    report the loss terms with `record_terms`; the datasets are validated at construction, and
    ``_get_train_sampler`` balances the splits when the arguments ask for it.
    """

    needs_both_splits = True
    """Whether the training set must hold forget and retain rows (gradient ascent needs none)."""
    # compute_loss returns a per-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        if train_dataset is not None and hasattr(train_dataset, "column_names"):
            validate_dataset(train_dataset, require_both_splits=self.needs_both_splits)
        eval_dataset = kwargs.get("eval_dataset")
        if eval_dataset is not None and hasattr(eval_dataset, "column_names"):
            validate_dataset(eval_dataset, require_both_splits=False)
        if data_collator is None:
            if processing_class is None:
                raise ValueError(
                    "Pass `processing_class=processor` (the VLM's processor) or a data_collator."
                )
            data_collator = self.default_collator(processing_class, args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        self._loss_terms: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def default_collator(self, processing_class: Any, args: ForgetRetainTrainingConfig) -> Any:
        """The collator used when none is passed, built on the VLM's processor."""
        raise NotImplementedError

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Balanced forget/retain sampling when asked (see ``balance_splits``)."""
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        assert isinstance(args, ForgetRetainTrainingConfig)
        if not args.balance_splits or not hasattr(dataset, "column_names"):
            return super()._get_train_sampler(train_dataset)
        forget = torch.tensor([split == FORGET_SPLIT for split in dataset[SPLIT_COLUMN]])
        if bool(forget.all()) or not bool(forget.any()):
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(args.data_seed or args.seed)
        return torch.utils.data.WeightedRandomSampler(
            half_per_class(forget).tolist(),
            num_samples=len(dataset),
            replacement=True,
            generator=generator,
        )

    def _set_signature_columns_if_needed(self) -> None:
        # Even with remove_unused_columns=True, the collator's raw columns must survive.
        if self._signature_columns is None:
            self._signature_columns = list(DATA_COLUMNS)  # type: ignore[assignment]

    def record_terms(self, model: torch.nn.Module, **terms: torch.Tensor) -> None:
        """Remember the value of each loss term of one step, for the next `log`."""
        split = "train" if model.training else "eval"
        for name, value in terms.items():
            self._loss_terms[split][name].append(float(value.detach()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log to ``logs``."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._loss_terms[split].items():
            if values:
                logs[f"{prefix}{name}"] = sum(values) / len(values)
        self._loss_terms[split].clear()
        super().log(logs, start_time)

"""`ForgetRetainTrainer`: what every forget/retain trainer shares (`CagulTrainer` and the
`hf_cagul.baselines`).

`ForgetRetainTrainer` validates datasets in the data contract before training,
keeps their raw columns for the collator, draws forget and retain rows equally often, gives
every trainer one normalisation of its loss terms (each a mean over the whole batch of all
processes, see `ForgetRetainTrainer.global_means`), one reference model
(`ForgetRetainTrainer.reference_logits`), and logs the mean of each named loss term since the
last log.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, cast

import torch
from transformers import Trainer

from hf_cagul.data import (
    DATA_COLUMNS,
    FORGET_FLAG,
    FORGET_SPLIT,
    SPLIT_COLUMN,
    validate_dataset,
)
from hf_cagul.losses import half_per_class
from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig

_OLD_FORGET_FLAG = "cagul_forget"


class ForgetRetainTrainer(Trainer):
    """A `Trainer` over a dataset in the data contract of `hf_cagul.data`.

    Subclasses implement `default_collator` and ``compute_loss``: each loss term as its sum
    over this process's rows and their count, made whole-batch means by `global_means`, then
    reported with `record_terms`; the datasets are validated at construction, and
    ``_get_train_sampler`` balances the splits when the arguments ask for it.

    **Loss normalisation**, the same for CAGUL and every baseline: each term is its sum over
    the whole batch of all processes divided by its count over that batch (tokens or rows, as
    the term defines its mean), whatever the number of processes and however the rows split
    between them. A term without rows in the whole batch is an exact zero that stays in the
    graph: backward runs, and gives zero gradients. Every process runs the same forwards and
    collectives in the same order (see `must_compute`).
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

    def pop_forget_flags(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Take the ``(batch,)`` forget-row flags out of ``inputs``, as bools.

        They are ``forget`` (`FORGET_FLAG`); ``cagul_forget``, their name in CAGUL's batches
        until 0.1.0, is still read, with a `FutureWarning`.

        Args:
            inputs: One batch, as the collator built it; the flags are removed from it.

        Raises:
            ValueError: If the batch holds neither key.
        """
        if FORGET_FLAG in inputs:
            return cast(torch.Tensor, inputs.pop(FORGET_FLAG)).bool()
        if _OLD_FORGET_FLAG in inputs:
            warnings.warn(
                f"The batch key {_OLD_FORGET_FLAG!r} is now {FORGET_FLAG!r}; the old name will "
                "stop being read in a future release.",
                FutureWarning,
                stacklevel=2,
            )
            return cast(torch.Tensor, inputs.pop(_OLD_FORGET_FLAG)).bool()
        raise ValueError(
            f"The batch has no {FORGET_FLAG!r} key: a (batch,) bool tensor, True for forget rows. "
            "Collate with hf_cagul.data's collators, or add it in your own collator."
        )

    def must_compute(self, rows: torch.Tensor) -> bool:
        """Whether this process computes a term over ``rows`` (a bool mask of its rows or tokens).

        Yes when it holds some; always under several processes (DDP, FSDP, ZeRO-3), where every
        forward carries collectives that all processes must run in step, even one whose
        micro-batch holds no row for the term: its share is then an exact zero in the graph.

        Args:
            rows: The term's rows (or tokens) in this process's micro-batch.
        """
        return self.accelerator.num_processes > 1 or bool(rows.any())

    @staticmethod
    def empty_term(like: torch.Tensor) -> torch.Tensor:
        """An exact float32 zero in the graph of ``like``: a term over no rows (a sum over an
        empty selection, so never NaN, whatever ``like`` holds)."""
        return like.flatten()[:0].float().sum()

    def global_means(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Each term's share of its mean over the whole batch of all processes.

        Args:
            sums: ``(terms,)``, each term summed over this process's rows (in the graph).
            counts: ``(terms,)``, the number of rows (or tokens) each sum runs over here.

        Returns:
            ``sums * processes / counts`` with ``counts`` summed over the processes (at least
            1). DDP averages gradients over the processes, so the gradient of these shares is
            that of one process seeing the whole batch, however the rows split; summed over
            the processes and divided by their number, they are the whole batch's means (what
            `record_terms` logs). Every process must call it (it is a collective).
        """
        counts, processes = self._global(counts.to(sums.device))
        return sums * (processes / counts.clamp_min(1).float())

    @torch.no_grad()
    def reference_logits(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Logits of the model before training on ``inputs`` (model inputs only).

        By default ``model`` itself with its adapter disabled (``disable_adapter()`` of a
        `CagulModel` or a PEFT model), so no copy of the model is ever made; override it to plug
        in another reference (a frozen copy, a cache). Under several processes every process
        calls it whenever one does (see `must_compute`).

        Args:
            model: The model being trained, as ``compute_loss`` receives it (maybe wrapped).
            inputs: Model inputs of one batch (no labels, no forget flags).

        Returns:
            The reference's logits, ``(batch, seq, vocab)``, without gradient.
        """
        with self.accelerator.unwrap_model(model).disable_adapter():
            return cast(torch.Tensor, model(**inputs).logits)

    def _global(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``values`` summed over the training processes, and the number of processes."""
        processes = self.accelerator.num_processes
        if processes == 1:
            return values, 1
        return cast(torch.Tensor, self.accelerator.reduce(values, reduction="sum")), processes

    def record_terms(self, model: torch.nn.Module, **terms: torch.Tensor) -> None:
        """Remember the whole batch's mean of each loss term of one step, for the next `log`.

        ``terms`` are this process's shares, as `global_means` returns them (or combinations
        of them); what is logged is the same on every process. Every process must call it (it
        is a collective).

        Args:
            model: The model of the step (its ``training`` flag tells train from eval).
            **terms: Each term's share, by the name it is logged under.
        """
        split = "train" if model.training else "eval"
        values = torch.stack([value.detach() for value in terms.values()])
        reduced, processes = self._global(values)
        for name, value in zip(terms, (reduced / processes).tolist(), strict=True):
            self._loss_terms[split][name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log to ``logs``."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._loss_terms[split].items():
            if values:
                logs[f"{prefix}{name}"] = sum(values) / len(values)
        self._loss_terms[split].clear()
        super().log(logs, start_time)

"""Fine-tuning unlearning baselines, each a `Trainer` on the data contract of `hf_cagul.data`.

With ``NLL`` the per-row mean token negative log-likelihood of the true answer (averaged over
the rows of a batch), ``pi`` the model being unlearned and ``pi_ref`` the model before
unlearning (see ``docs/comparison.md``):

============  ==============================================================================
GA            minimise ``-NLL_forget`` (Jang et al. 2023, arXiv 2210.01504; TOFU).
GD            ``-NLL_forget + NLL_retain`` (Liu et al. 2022; TOFU's "grad diff").
KL            ``-NLL_forget + KL(pi_ref || pi)`` on the retain answers' tokens (TOFU).
NPO           ``(2/beta) E_forget[log(1 + (pi(y|x) / pi_ref(y|x))^beta)] + NLL_retain``
              (Zhang et al. 2024, arXiv 2404.05868).
IdkPO         DPO with a refusal preferred over the true answer on forget rows, plus
              ``NLL_retain`` (Maini et al. 2024, TOFU; Rafailov et al. 2023).
============  ==============================================================================

The retain term is weighted by ``retain_weight`` and the forget term by ``forget_weight``.
Each term is a mean over the whole batch of all processes, normalised as CAGUL's
(`hf_cagul.trainer.ForgetRetainTrainer.global_means`): NLL, NPO and DPO per row, KL per token.
Reference outputs come from `ForgetRetainTrainer.reference_logits`: the same PEFT model with
its adapter disabled (never a copy of the VLM); a fully fine-tuned model needs an explicit
``ref_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, cast

import torch
from torch import nn

from hf_cagul.baselines.unlearning_config import UnlearningTrainingConfig
from hf_cagul.data import (
    FORGET_SPLIT,
    IGNORE_INDEX,
    REFUSAL_BATCH,
    SPLIT_COLUMN,
    UnlearningDataCollator,
)
from hf_cagul.losses import answer_log_probs, dpo_loss, mean_nll, npo_loss, token_kl
from hf_cagul.trainer import ForgetRetainTrainer, ForgetRetainTrainingConfig

__all__ = [
    "BASELINES",
    "GATrainer",
    "GDTrainer",
    "IdkPOTrainer",
    "KLTrainer",
    "NPOTrainer",
    "UnlearningTrainer",
    "UnlearningTrainingConfig",
    "get_baseline_trainer",
]


@dataclass
class _Step:
    """One batch as the loss terms see it; reference outputs are computed on first use."""

    trainer: UnlearningTrainer
    model: nn.Module
    inputs: dict[str, Any]
    logits: torch.Tensor
    labels: torch.Tensor
    forget: torch.Tensor
    refusal: dict[str, Any] | None

    @cached_property
    def answer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row summed log-probability of the true answer and its token count (one
        log-softmax over the batch, shared by every term)."""
        return answer_log_probs(self.logits, self.labels)

    @property
    def nll(self) -> torch.Tensor:
        """Per-row mean token NLL of the true answer."""
        return mean_nll(*self.answer)

    @property
    def log_probs(self) -> torch.Tensor:
        """Per-row summed log-probability of the true answer."""
        return self.answer[0]

    @cached_property
    def reference_logits(self) -> torch.Tensor:
        """Logits of the reference model on this batch."""
        return self.trainer.reference_logits(self.model, self.inputs)

    def reference_log_probs(self) -> torch.Tensor:
        """Per-row summed log-probability of the true answer under the reference model."""
        return answer_log_probs(self.reference_logits, self.labels)[0]


Term = tuple[torch.Tensor, torch.Tensor]
"""A loss term of one process: its sum over this process's rows (or tokens), and their count."""


class UnlearningTrainer(ForgetRetainTrainer):
    """Base of the fine-tuning baselines: ``forget_weight * forget + retain_weight * retain``.

    Subclasses define `forget_term` and, when they use retain rows, `retain_term`, each as its
    sum over this process's rows and their count (`Term`); `ForgetRetainTrainer.global_means`
    makes them means over the whole batch of all processes.

    Args:
        model: A model from `hf_cagul.baselines.prepare_model` (PEFT LoRA or full).
        args: An `UnlearningTrainingConfig`.
        train_dataset: Rows in the data contract; gradient ascent keeps the forget rows only.
        processing_class: The VLM's processor, for the default `UnlearningDataCollator`.
        data_collator: Optional; defaults to an `UnlearningDataCollator`.
        ref_model: The model before unlearning, needed only by methods with a reference
            (KL, NPO, IdkPO) when ``model`` is not a PEFT model.
        **kwargs: Anything else `Trainer` accepts.
    """

    method: ClassVar[str] = ""
    uses_retain: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    needs_refusals: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        args: UnlearningTrainingConfig,
        train_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        ref_model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, UnlearningTrainingConfig):
            raise TypeError(
                "`args` must be an UnlearningTrainingConfig (it carries the loss weights)."
            )
        if not any(parameter.requires_grad for parameter in model.parameters()):
            raise ValueError(
                "No parameter of the model is trainable: prepare it with "
                "`hf_cagul.baselines.prepare_model(vlm)` (LoRA) or `prepare_model(vlm, full=True)`."
            )
        if self.needs_reference and ref_model is None and not hasattr(model, "disable_adapter"):
            raise ValueError(
                f"{self.method} compares the model with the model before unlearning. A PEFT "
                "model provides it by disabling its adapter; a fully fine-tuned one needs "
                "`ref_model=` (a frozen copy of the model before unlearning)."
            )
        if not self.uses_retain and train_dataset is not None and hasattr(train_dataset, "filter"):
            train_dataset = train_dataset.filter(
                lambda split: split == FORGET_SPLIT, input_columns=SPLIT_COLUMN
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()

    def default_collator(self, processing_class: Any, args: ForgetRetainTrainingConfig) -> Any:
        """`UnlearningDataCollator` on the VLM's processor (with refusals for IdkPO)."""
        return UnlearningDataCollator(
            processing_class,
            max_length=args.max_length,
            augment=args.photo_augmentation(),
            with_refusals=self.needs_refusals,
        )

    @property
    def needs_both_splits(self) -> bool:  # type: ignore[override]
        """Gradient ascent trains on forget rows alone; the others need both splits."""
        return self.uses_retain

    @torch.no_grad()
    def reference_logits(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Logits of the model before unlearning: ``ref_model``'s when given, else the PEFT
        model's with its adapter disabled."""
        if self.ref_model is not None:
            return cast(torch.Tensor, self.ref_model(**inputs).logits)
        return super().reference_logits(model, inputs)

    def forget_term(self, step: _Step) -> Term:
        """The forget loss of this process's forget rows: its sum over them, and their count."""
        raise NotImplementedError

    def retain_term(self, step: _Step) -> Term:
        """The answer NLL of the retain rows (a mean per row): summed over them, and their count."""
        retain = ~step.forget
        return step.nll[retain].sum(), retain.sum()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``forget_weight * forget_term + retain_weight * retain_term`` (each logged)."""
        args = self.args
        assert isinstance(args, UnlearningTrainingConfig)
        inputs = dict(inputs)
        forget = self.pop_forget_flags(inputs)
        refusal = inputs.pop(REFUSAL_BATCH, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        step = _Step(self, model, inputs, outputs.logits, labels, forget, refusal)
        # A term without rows here (gradient ascent given only retain rows) is an exact zero in
        # the graph: backward then gives zero gradients instead of failing.
        nothing = (self.empty_term(outputs.logits), forget.new_zeros((), dtype=torch.long))
        forget_sum, forget_count = self.forget_term(step) if self.must_compute(forget) else nothing
        retain_sum, retain_count = (
            self.retain_term(step) if self.uses_retain and self.must_compute(~forget) else nothing
        )
        forget_loss, retain_loss = self.global_means(
            torch.stack([forget_sum, retain_sum]), torch.stack([forget_count, retain_count])
        )
        loss = args.forget_weight * forget_loss + args.retain_weight * retain_loss
        self.record_terms(model, forget_loss=forget_loss, retain_loss=retain_loss)
        return (loss, outputs) if return_outputs else loss


class GATrainer(UnlearningTrainer):
    """Gradient ascent: minimise ``-NLL`` of the true answers of the forget rows."""

    method = "ga"
    uses_retain = False

    def forget_term(self, step: _Step) -> Term:
        """Minus the answer NLL of the forget rows: summed over them, and their count."""
        return -step.nll[step.forget].sum(), step.forget.sum()


class GDTrainer(GATrainer):
    """Gradient difference: ascent on forget rows, descent (NLL) on retain rows."""

    method = "gd"
    uses_retain = True


class KLTrainer(GATrainer):
    """Ascent on forget rows, ``KL(pi_ref || pi)`` over the retain answers' tokens."""

    method = "kl"
    uses_retain = True
    needs_reference = True

    def retain_term(self, step: _Step) -> Term:
        """KL(reference || current) summed over the retain rows' answer tokens, and their count."""
        rows = (step.labels[:, 1:] != IGNORE_INDEX) & ~step.forget.unsqueeze(1)
        kl = token_kl(step.reference_logits[:, :-1][rows], step.logits[:, :-1][rows], "sum")
        return kl, rows.sum()


class NPOTrainer(GDTrainer):
    """Negative preference optimisation on forget rows, NLL on retain rows."""

    method = "npo"
    needs_reference = True

    def forget_term(self, step: _Step) -> Term:
        """The NPO loss of the forget rows' true answers: summed over them, and their count."""
        args = self.args
        assert isinstance(args, UnlearningTrainingConfig)
        forget = step.forget
        npo = npo_loss(step.log_probs[forget], step.reference_log_probs()[forget], args.beta, "sum")
        return npo, forget.sum()


class IdkPOTrainer(GDTrainer):
    """DPO toward a refusal ("I don't know") over the true answer on forget rows."""

    method = "idkpo"
    needs_reference = True
    needs_refusals = True

    def forget_term(self, step: _Step) -> Term:
        """The DPO loss with the refusal chosen and the true answer rejected: summed over the
        forget rows, and their count."""
        args = self.args
        assert isinstance(args, UnlearningTrainingConfig)
        forget = step.forget
        refusal = step.refusal
        if refusal is None and bool(forget.any()):
            raise ValueError(
                "IdkPO needs the refusal batch of the forget rows: use an "
                "`UnlearningDataCollator(..., with_refusals=True)`."
            )
        if refusal is None:
            # No forget row here, yet the other processes run the refusal's passes, whose
            # forwards carry collectives: run them on this batch, and keep none of its rows.
            refusal = {**step.inputs, "labels": step.labels}
        refusal = dict(refusal)
        refusal_labels = refusal.pop("labels")
        rows = int(forget.sum())  # the refusal batch holds the forget rows, in order
        chosen = answer_log_probs(step.model(**refusal).logits, refusal_labels)[0][:rows]
        reference_chosen = answer_log_probs(
            self.reference_logits(step.model, refusal), refusal_labels
        )[0][:rows]
        dpo = dpo_loss(
            chosen,
            step.log_probs[forget],
            reference_chosen,
            step.reference_log_probs()[forget],
            args.beta,
            "sum",
        )
        return dpo, forget.sum()


BASELINES: dict[str, type[UnlearningTrainer]] = {
    trainer.method: trainer
    for trainer in (GATrainer, GDTrainer, KLTrainer, NPOTrainer, IdkPOTrainer)
}
"""The baseline trainers by method name."""


def get_baseline_trainer(method: str) -> type[UnlearningTrainer]:
    """The trainer class of ``method`` (one of `BASELINES`, case-insensitive)."""
    try:
        return BASELINES[method.lower()]
    except KeyError:
        raise ValueError(
            f"Unknown unlearning method {method!r}; choose one of {', '.join(BASELINES)}."
        ) from None

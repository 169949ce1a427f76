"""`CagulTrainer`: fit a CAGUL adapter with transformers' `Trainer`.

Only the adapter (discriminator + encoder) is trained; the VLM stays frozen. The loss has three
terms and an optional fourth, each weighted in `CagulTrainingConfig` (the paper leaves them
open; these are the project's documented choices, see ``docs/training.md``):

* **forget**: cross-entropy toward the forget target (a refusal) on forget rows, with their
  selected visual tokens rewritten;
* **retain**: KL(base || adapted) over the answer tokens of retain rows, rewritten as well, so
  a false positive of the discriminator costs little. Base logits come from
  `ForgetRetainTrainer.reference_logits`: the same model inside ``disable_adapter()`` under
  ``torch.no_grad()``, so there is never a second VLM in memory;
* **discriminator**: binary cross-entropy of each image's gate logit, forget vs retain;
* **depth** (off by default, ``depth_weight``): the forget rows' TRUE answers made unlikely
  under the rewritten tokens, NPO relative to the base or unlikelihood (``depth_loss``), so that
  the answer is not merely outranked by the refusal but loses its likelihood. Its batch is the
  collator's ``true_answer`` (`TRUE_ANSWER_BATCH`).

Each term is a mean over the whole batch, across processes under DDP / FSDP / ZeRO-3
(`ForgetRetainTrainer.global_means`, ``docs/distributed.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from hf_cagul import persistence
from hf_cagul.config import WEIGHTS_NAME
from hf_cagul.data import (
    CAGUL_TARGETS,
    FORGET_SPLIT,
    IGNORE_INDEX,
    IMAGE_COLUMN,
    QUESTION_COLUMN,
    REPLACED_FLAG,
    SPLIT_COLUMN,
    SUBJECT_COLUMN,
    TRUE_ANSWER_BATCH,
    CagulDataCollator,
    ForgetRetainDataCollator,
)
from hf_cagul.data.benchmarks import select_where
from hf_cagul.devices import is_partitioned
from hf_cagul.losses import answer_log_probs, answer_unlikelihoods, npo_loss, token_kl
from hf_cagul.model import CagulModel, FrozenPass
from hf_cagul.trainer.cagul_config import TRAINING_CONFIG_NAME, CagulTrainingConfig
from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig
from hf_cagul.trainer.forget_retain_trainer import ForgetRetainTrainer
from hf_cagul.trainer.gate_fit import (
    GateFitReport,
    fit_gate,
    forget_photos_of,
    negative_photos_of,
)

logger = logging.getLogger(__name__)


def _gate_bce_sums(logits: torch.Tensor, forget: torch.Tensor) -> torch.Tensor:
    """Summed gate BCE of the forget images and of the retain images: a ``(2,)`` tensor.

    ``logits`` are one gate's logits of the images of a batch, ``forget`` their labels.
    """
    labels = forget.to(device=logits.device)
    losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return torch.stack([losses[labels].sum(), losses[~labels].sum()])


def _modules_without_backward(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` quantized by ``torch.ao`` (dynamic or static)."""
    return [
        name
        for name, module in model.named_modules()
        if type(module).__module__.startswith("torch.ao.nn.quantized")
    ]


def _adapter_entries(state_dict: Mapping[str, torch.Tensor], adapter: str) -> dict[str, Any]:
    """The entries of adapter ``adapter`` in a `CagulModel`'s state dict, keys made relative.

    Keys may carry a wrapper's prefix (``module.``, ``_fsdp_wrapped_module.``).
    """
    marker = f"cagul_adapters.{adapter}."
    return {key.split(marker, 1)[1]: tensor for key, tensor in state_dict.items() if marker in key}


class _LogGateFit(TrainerCallback):
    """Logs the gate fitted apart as the training's first entry (the Trainer starts its log
    history afresh when training starts, so it cannot be logged before)."""

    def __init__(self, trainer: CagulTrainer, logs: dict[str, float]) -> None:
        self.trainer, self.logs = trainer, logs

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.log(dict(self.logs))


class CagulTrainer(ForgetRetainTrainer):
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
        gate_negatives: Photos the gate must not flag, for ``gate_fit="apart"`` (a
            `datasets.Dataset` with ``image`` and ``question`` columns; every row a negative).
            Defaults to the retain rows of ``train_dataset``.
        **kwargs: Anything else `Trainer` accepts.

    Attributes:
        gate_fit_report: What the last gate fitted apart did (`GateFitReport`), or None.
    """

    def __init__(
        self,
        model: CagulModel,
        args: CagulTrainingConfig,
        train_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        gate_negatives: Any = None,
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
        quantized = _modules_without_backward(model.base_model)
        if quantized:
            raise ValueError(
                f"The VLM holds torch-quantized modules ({quantized[0]}, ...), whose ops have no "
                "backward: the adapter's gradients would be silently wrong. Fit the adapter on "
                "the float (or bitsandbytes-quantized) model, then load it into this one with "
                "`CagulModel.from_pretrained`."
            )
        if not any(p.requires_grad for p in model.active_adapter_module.parameters()):
            raise ValueError(
                "The adapter is frozen: load it with `CagulModel.from_pretrained(..., "
                "is_trainable=True)` to continue fitting it."
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        if self.args.n_gpu > 1:
            # Checked after Trainer's init, which counts a model spread by device_map as one
            # GPU. nn.DataParallel runs replicas in threads that do not see the per-call
            # context (disable_adapter, force_gate, trace) the hooks read.
            raise ValueError(
                f"This process sees {self.args.n_gpu} GPUs, so Trainer would use nn.DataParallel, "
                "which CagulTrainer does not support. Launch one process per GPU with "
                "`torchrun --nproc_per_node N` or `accelerate launch`, or expose one GPU "
                "(CUDA_VISIBLE_DEVICES=0)."
            )
        fsdp_plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        state_dict_type = str(getattr(fsdp_plugin, "state_dict_type", ""))
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in state_dict_type:
            # Trainer hands _save a state dict under FULL_STATE_DICT only; otherwise it would
            # write the whole sharded VLM and no adapter.
            raise ValueError(
                f"FSDP state_dict_type {state_dict_type} would save the whole "
                "sharded VLM and no adapter: set `fsdp_state_dict_type: FULL_STATE_DICT` in the "
                "accelerate config (see examples/accelerate_fsdp.yaml)."
            )
        if args.gate_fit == "apart":
            self._check_gate_fit_data(model, train_dataset, gate_negatives)
        self.gate_negatives = gate_negatives
        self.gate_fit_report: GateFitReport | None = None

    def _check_gate_fit_data(self, model: CagulModel, train: Any, negatives: Any) -> None:
        """Refuse, before any training, what the gate fitted apart cannot read."""
        if is_partitioned(model.active_adapter_module):
            raise ValueError(
                "gate_fit='apart' runs the gate outside the distributed engine, but DeepSpeed "
                "ZeRO-3 partitions the adapter: use ZeRO-2, DDP or FSDP, or gate_fit='joint'."
            )
        for name, dataset, columns in (
            ("train_dataset", train, (IMAGE_COLUMN, QUESTION_COLUMN, SPLIT_COLUMN)),
            ("gate_negatives", negatives, (IMAGE_COLUMN, QUESTION_COLUMN)),
        ):
            if dataset is None and name == "gate_negatives":
                continue
            missing = [c for c in columns if c not in getattr(dataset, "column_names", ())]
            if missing:
                raise ValueError(
                    f"gate_fit='apart' reads the photos of `{name}`, which must be a "
                    f"datasets.Dataset with the columns {list(columns)} (missing: {missing})."
                )
        if not isinstance(self.data_collator, ForgetRetainDataCollator) and (
            self.processing_class is None
        ):
            raise ValueError(
                "gate_fit='apart' builds the photos' model inputs with the VLM's processor: "
                "pass `processing_class=processor`."
            )

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """`Trainer.train`; with ``gate_fit="apart"``, the gate is fitted first, alone
        (`fit_gate`), and frozen while the encoder is fitted.

        Frozen rather than its loss term dropped: the discriminator term is still computed and
        logged (a monitor of the fitted gate), but no update can move the gate away from the
        threshold just calibrated on it. Its trainable flags are restored afterwards. Resuming
        fits the gate again (the same gate: it is deterministic from the seed), then loads
        the checkpoint's adapter.
        """
        settings = self.args
        assert isinstance(settings, CagulTrainingConfig)
        if settings.gate_fit != "apart":
            return super().train(*args, **kwargs)
        cagul = self.accelerator.unwrap_model(self.model)
        assert isinstance(cagul, CagulModel)
        gate = cagul.active_adapter_module.discriminator
        trainable = [p for p in gate.parameters() if p.requires_grad]
        callbacks = []
        if trainable or settings.gate_target_fpr is not None:
            report = self.fit_gate_apart(cagul)
            callbacks.append(_LogGateFit(self, report.logs()))
        else:
            logger.warning(
                "gate_fit='apart': the gate has no trainable parameters, nothing to fit."
            )
        for callback in callbacks:
            self.add_callback(callback)
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            return super().train(*args, **kwargs)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
            for callback in callbacks:
                self.remove_callback(callback)

    def fit_gate_apart(self, model: CagulModel) -> GateFitReport:
        """Fit the active gate on cached features of the forget photos and the negatives and,
        with ``gate_target_fpr``, set its calibrated threshold in the adapter's config.

        Args:
            model: The `CagulModel` being fitted (unwrapped).

        Returns:
            The fit's report, also kept as `gate_fit_report`.
        """
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        train: Any = self.train_dataset
        forget = select_where(train, SPLIT_COLUMN, lambda split: split == FORGET_SPLIT)
        negatives = self.gate_negatives
        if negatives is None:
            negatives = select_where(train, SPLIT_COLUMN, lambda split: split != FORGET_SPLIT)
        collator = self.data_collator
        if not isinstance(collator, ForgetRetainDataCollator):
            collator = CagulDataCollator(self.processing_class)
        forget_photos = forget_photos_of(forget, collator)
        # A photo of a forget row is a positive, even if a retain row shows it too.
        known = {photo.key for photo in forget_photos}
        taught = train[SUBJECT_COLUMN] if SUBJECT_COLUMN in train.column_names else ()
        negative_photos = [
            photo for photo in negative_photos_of(negatives, taught) if photo.key not in known
        ]
        report = fit_gate(model, collator, forget_photos, negative_photos, args.gate_fit_settings())
        if report.calibration is not None:
            name = model.active_adapter
            model.cagul_config[name] = dataclasses.replace(
                model.cagul_config[name],
                gate_threshold=report.calibration["threshold"],
                gate_calibration=report.calibration,
            )
        logger.info(report.describe())
        self.gate_fit_report = report
        return report

    def default_collator(self, processing_class: Any, args: ForgetRetainTrainingConfig) -> Any:
        """`CagulDataCollator` on the VLM's processor, with the arguments' data options; with
        the depth term on, its batches also carry the forget rows' true answers."""
        assert isinstance(args, CagulTrainingConfig)
        return CagulDataCollator(
            processing_class,
            max_length=args.max_length,
            augment=args.photo_augmentation(),
            policy=replace(CAGUL_TARGETS, true_answer_batch=args.depth_weight > 0),
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The weighted sum of the forget, retain, discriminator and (when weighted) depth
        terms, each logged."""
        cagul = self.accelerator.unwrap_model(model)
        assert isinstance(cagul, CagulModel)
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        inputs = dict(inputs)
        forget = self.pop_forget_flags(inputs)
        query_mask = inputs.pop("query_mask", None)
        true_answers = inputs.pop(TRUE_ANSWER_BATCH, None)
        labels = inputs.pop("labels")
        answer = labels[:, 1:] != IGNORE_INDEX  # positions whose next token is an answer token
        retain_rows = answer & ~forget.unsqueeze(1)
        forget_rows = answer & forget.unsqueeze(1)

        base_logits = frozen = None
        if args.retain_weight > 0 and self.must_compute(retain_rows):
            reference, frozen = self.reference_pass(model, inputs, query_mask)
            base_logits = reference[:, :-1][retain_rows]
        with cagul.force_gate(True):
            outputs = model(**inputs, query_mask=query_mask, frozen_pass=frozen)
        logits = outputs.logits[:, :-1]
        targets = labels[:, 1:]

        # Over no forget token, a sum over an empty selection: an exact zero in the graph.
        forget_sum = F.cross_entropy(
            logits[forget_rows].float(), targets[forget_rows], reduction="sum"
        )
        retain_sum = (
            token_kl(base_logits, logits[retain_rows], reduction="sum")
            if base_logits is not None
            else self.empty_term(logits)
        )
        gate_logits = outputs.get("gate_logits")
        if gate_logits is None:  # a batch without images
            gate_sums = self.empty_term(logits).expand(2)
            image_forget = forget.new_zeros(0).to(forget_rows.device)
        else:
            image_forget = forget[outputs["image_spans"][:, 0].to(forget.device)]
            gate_sums = _gate_bce_sums(gate_logits[0], image_forget).float()
            image_forget = image_forget.to(forget_rows.device)
        sums = [forget_sum, retain_sum, gate_sums[0], gate_sums[1]]
        counts = [forget_rows.sum(), retain_rows.sum(), image_forget.sum(), (~image_forget).sum()]
        if args.depth_weight > 0:  # off: the same terms, forwards and collectives as before
            if true_answers is None and not self.must_compute(forget):
                depth = (self.empty_term(logits), counts[0].new_zeros(()))
            else:
                depth = self._depth_term(model, inputs, query_mask, labels, forget, true_answers)
            sums.append(depth[0])
            counts.append(depth[1].to(counts[0].device))
        means = self.global_means(torch.stack(sums), torch.stack(counts))
        forget_loss, retain_loss, gate_forget, gate_retain = means[:4]
        # Each class present in the batch weighs one half, whatever its count: forget sets
        # are small, and an unweighted BCE lets the gate say "retain" to every image.
        gate_loss = 0.5 * (gate_forget + gate_retain)
        loss = (
            args.forget_weight * forget_loss
            + args.retain_weight * retain_loss
            + args.discriminator_weight * gate_loss
        )
        terms = {
            "forget_loss": forget_loss,
            "retain_kl": retain_loss,
            "discriminator_loss": gate_loss,
        }
        if args.depth_weight > 0:
            loss = loss + args.depth_weight * means[4]
            terms["depth_loss"] = means[4]
        self.record_terms(model, **terms)
        return (loss, outputs) if return_outputs else loss

    def reference_pass(
        self, model: nn.Module, inputs: dict[str, Any], query_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, FrozenPass | None]:
        """The reference logits on ``inputs`` and, with ``share_frozen_pass``, what the adapted
        pass on the same inputs reuses of that pass (`CagulModel.record_frozen_pass`).

        Shared, the reference is the adapted model with every gate held closed, bit-identical to
        the bare VLM, in a pass that also keeps the selection scores and the gate's input. Not
        shared, or when a subclass overrides `reference_logits` (its reference is always the
        one used), it is `reference_logits` and the adapted pass runs its own side passes.
        """
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        overridden = type(self).reference_logits is not ForgetRetainTrainer.reference_logits
        if not args.share_frozen_pass or overridden:
            return self.reference_logits(model, inputs), None
        cagul = self.accelerator.unwrap_model(model)
        with torch.no_grad(), cagul.record_frozen_pass() as frozen:
            logits = model(**inputs, query_mask=query_mask).logits
        return logits, frozen if frozen.recorded else None

    def _depth_term(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        query_mask: torch.Tensor | None,
        labels: torch.Tensor,
        forget: torch.Tensor,
        true_answers: dict[str, Any] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The depth term of this process's forget rows: its sum and its count (rows for NPO,
        true-answer tokens for unlikelihood), over the ``true_answers`` batch, rewritten. Only
        the rows whose forget target replaces the true answer count (`REPLACED_FLAG`): a
        visual question's answer is its forget target, kept by the forget term."""
        args = self.args
        assert isinstance(args, CagulTrainingConfig)
        if true_answers is None:
            if bool(forget.any()):
                raise ValueError(
                    "depth_weight > 0 needs the forget rows' true answers in each batch: collate "
                    "with `CagulDataCollator(processor, policy=dataclasses.replace(CAGUL_TARGETS, "
                    "true_answer_batch=True))`, or leave data_collator unset (CagulTrainer's "
                    "default collator adds them when depth_weight > 0)."
                )
            # No forget row here, yet the other processes run the depth passes, whose forwards
            # carry collectives: run them on this batch, and keep none of its rows.
            true_answers = {
                **inputs,
                "query_mask": query_mask,
                "labels": labels,
                REPLACED_FLAG: torch.zeros_like(forget),
            }
        batch = dict(true_answers)
        answer_labels = batch.pop("labels")
        answer_query = batch.pop("query_mask", None)
        replaced = batch.pop(REPLACED_FLAG).to(answer_labels.device)
        reference_logits = frozen = None
        if args.depth_loss == "npo":
            reference_logits, frozen = self.reference_pass(model, batch, answer_query)
        with self.accelerator.unwrap_model(model).force_gate(True):
            logits = model(**batch, query_mask=answer_query, frozen_pass=frozen).logits
        if reference_logits is None:
            unlikelihoods, tokens = answer_unlikelihoods(logits, answer_labels)
            return unlikelihoods[replaced].sum(), tokens[replaced].sum()
        log_probs = answer_log_probs(logits, answer_labels)[0][replaced]
        reference = answer_log_probs(reference_logits, answer_labels)[0]
        return npo_loss(log_probs, reference[replaced], args.depth_beta, "sum"), replaced.sum()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the fitted (active) adapter only, in ``output_dir`` itself; never the VLM.

        ``state_dict`` is the whole model's, gathered by Trainer under FSDP
        (``FULL_STATE_DICT``) or DeepSpeed ZeRO-3: the adapter's entries are taken from it.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save or output_dir is None:
            return
        cagul = self.accelerator.unwrap_model(self.model)
        assert isinstance(cagul, CagulModel)
        adapter_state = _adapter_entries(state_dict or {}, cagul.active_adapter)
        if not adapter_state and is_partitioned(cagul.active_adapter_module):
            # Not a ValueError: Trainer reads that as "retry with a DeepSpeed checkpoint".
            raise RuntimeError(
                "DeepSpeed ZeRO-3 partitions the adapter and did not gather it for saving: set "
                "`zero3_save_16bit_model: true` in the accelerate config (or "
                "`stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed config)."
            )
        # FSDP and ZeRO-3 shard the adapter too: Trainer hands over the gathered weights.
        cagul.save_adapter(output_dir, state_dict=adapter_state or None)
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

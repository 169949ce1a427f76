"""CAGUL against fine-tuning unlearning, on the same model, splits, seed and evaluation.

`run_comparison` is the whole comparison on a model and benchmark of your own (``hf-cagul
compare --model ... --benchmark ...``): the model before unlearning, CAGUL fitted with
`fit_cagul_adapter`, then every baseline, each evaluated by the same suite.

`compare_baselines` fits every baseline of `hf_cagul.baselines` on the frozen model (LoRA
adapters, removed again afterwards, or a fully fine-tuned copy), evaluates each, and measures
the fit: wall time, peak memory, trainable parameters, and whether the served model's base
weights changed. `comparison_table` turns the results into one row per method;
`write_comparison` writes it as markdown and CSV.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer
from transformers.trainer_callback import ProgressCallback

from hf_cagul.baselines import (
    BASELINES,
    UnlearningTrainingConfig,
    get_baseline_trainer,
    prepare_model,
)
from hf_cagul.config import CagulConfig
from hf_cagul.data import gate_negatives
from hf_cagul.data.benchmarks import training_set
from hf_cagul.evaluation.report import COMPARISON_COLUMNS, comparison_markdown, write_report
from hf_cagul.evaluation.suite import evaluate_model
from hf_cagul.model import CagulModel, get_cagul_model
from hf_cagul.profiling import FitMeasurement, measure, trainable_parameters, weights_digest
from hf_cagul.trainer import CagulTrainer, CagulTrainingConfig

__all__ = [
    "BaselineSettings",
    "CagulFitSettings",
    "FitRecord",
    "FitSettings",
    "compare_baselines",
    "comparison_table",
    "fit_cagul_adapter",
    "measured_cagul_fit",
    "run_comparison",
    "scalar_metrics",
    "write_comparison",
]


def run_arguments(output_dir: str, seed: int, use_cpu: bool) -> dict[str, Any]:
    """`TrainingArguments` values every in-process fit shares (the demo's, a comparison's):
    seeded, no checkpoints, no logging, and a progress bar (transformers hides it when its
    logging is quieter than warnings)."""
    return {
        "output_dir": output_dir,
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": [],
        "use_cpu": use_cpu,
        "seed": seed,
        "disable_tqdm": False,
    }


_TrainerT = TypeVar("_TrainerT", bound=Trainer)


class _BarOnly(ProgressCallback):
    """Trainer's progress bar without the metrics dict it prints when a fit ends."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Print nothing: the run reports its own figures."""


def with_bar_only(trainer: _TrainerT) -> _TrainerT:
    """``trainer`` with a progress bar that prints no logs, for fits run inside a larger run
    (the demo, a comparison), whose own summary says what the fit gave."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_BarOnly())
    return trainer


@dataclass
class FitSettings:
    """The budget every method of a comparison shares.

    Args:
        steps: Optimizer steps of the fit.
        batch_size: Rows per step.
        learning_rate: AdamW learning rate.
        augment_images: Perturb photos while fitting (`PhotoAugmentation`).
        seed: Seed of the fit (and of a fresh adapter's initialisation).
        use_cpu: Fit on the CPU even where an accelerator is available (as the demo does, so
            that every method's fit time is measured on the same device).
    """

    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 1e-3
    augment_images: bool = True
    seed: int = 0
    use_cpu: bool = False

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}."
            )

    def training_arguments(self, output_dir: str) -> dict[str, Any]:
        """`TrainingArguments` values of a fit with these settings (no checkpoints or logs)."""
        return {
            **run_arguments(output_dir, self.seed, self.use_cpu),
            "max_steps": self.steps,
            "per_device_train_batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "augment_images": self.augment_images,
        }


@dataclass
class BaselineSettings:
    """Which fine-tuning baselines a comparison fits, and how; their budget is CAGUL's
    (`budget`), with their own steps and learning rate.

    Args:
        methods: Baselines to fit, from `hf_cagul.baselines.BASELINES`.
        baseline_steps: Optimizer steps of each baseline's fit (``None``: the CAGUL fit's).
        baseline_learning_rate: AdamW learning rate of the baselines.
        lora_r: LoRA rank (ignored with ``full``).
        full: Fine-tune every weight of the language model instead of LoRA adapters.
        beta: NPO's and IdkPO's inverse temperature.
    """

    methods: list[str] = field(
        default_factory=lambda: list(BASELINES),
        metadata={
            "help": "Fine-tuning baselines to fit.",
            "choices": sorted(BASELINES),
        },
    )
    baseline_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of each baseline (default: CAGUL's)."}
    )
    baseline_learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate of the baselines."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the baselines."})
    full: bool = field(
        default=False,
        metadata={"help": "Fine-tune the language model's full weights instead of LoRA."},
    )
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of NPO and IdkPO."})

    def __post_init__(self) -> None:
        for method in self.methods:
            get_baseline_trainer(method)  # an unknown name fails here, before any fit

    def budget(self, cagul: FitSettings) -> FitSettings:
        """The baselines' budget: ``cagul``'s batch, augmentation, seed and device, with
        ``baseline_steps`` (when set) and ``baseline_learning_rate``."""
        shared = {item.name: getattr(cagul, item.name) for item in dataclasses.fields(FitSettings)}
        return FitSettings(
            **{
                **shared,
                "steps": self.baseline_steps or cagul.steps,
                "learning_rate": self.baseline_learning_rate,
            }
        )

    def record(self, budget: FitSettings) -> dict[str, Any]:
        """These settings and their ``budget``, as a report's settings show them."""
        return {**dataclasses.asdict(self), "budget": dataclasses.asdict(budget)}


@dataclass
class CagulFitSettings(FitSettings):
    """How the CAGUL adapter is fitted (`CagulTrainer` on the frozen model), after `FitSettings`.

    Args:
        adapter: The `CagulConfig` of the adapter fitted.
        gate_fit: `CagulTrainingConfig.gate_fit`: ``"joint"`` or ``"apart"``.
        gate_target_fpr: `CagulTrainingConfig.gate_target_fpr` (with ``gate_fit="apart"``).
        depth_weight: `CagulTrainingConfig.depth_weight` (0: no depth term).
        depth_loss: `CagulTrainingConfig.depth_loss`.
        gate_every_question: `CagulTrainingConfig.gate_every_question` (with
            ``gate_fit="apart"``).
        gate_kept_as_negatives: `CagulTrainingConfig.gate_kept_as_negatives` (with
            ``gate_fit="apart"``).
        gate_augmentation: `CagulTrainingConfig.gate_augmentation` (with ``gate_fit="apart"``).
    """

    adapter: CagulConfig = field(default_factory=CagulConfig)
    gate_fit: str = "joint"
    gate_target_fpr: float | None = None
    depth_weight: float = 0.0
    depth_loss: str = "npo"
    gate_every_question: bool = False
    gate_kept_as_negatives: bool = False
    gate_augmentation: str = "photo"

    def training_arguments(self, output_dir: str) -> dict[str, Any]:
        """`FitSettings.training_arguments` with the gate's fit and the depth term."""
        return {
            **super().training_arguments(output_dir),
            "gate_fit": self.gate_fit,
            "gate_target_fpr": self.gate_target_fpr,
            "depth_weight": self.depth_weight,
            "depth_loss": self.depth_loss,
            "gate_every_question": self.gate_every_question,
            "gate_kept_as_negatives": self.gate_kept_as_negatives,
            "gate_augmentation": self.gate_augmentation,
        }


def fit_cagul_adapter(
    vlm: PreTrainedModel,
    processor: Any,
    train: Dataset,
    settings: CagulFitSettings,
    gate_negatives: Dataset | None = None,
) -> CagulModel:
    """A CAGUL adapter fitted with `CagulTrainer` on the frozen ``vlm`` (returned in eval mode).

    ``gate_negatives``: `CagulTrainer`'s, for a gate fitted apart (None: the retain rows).
    """
    torch.manual_seed(settings.seed)
    model = get_cagul_model(vlm, settings.adapter)
    return train_cagul_adapter(model, processor, train, settings, gate_negatives)


def train_cagul_adapter(
    model: CagulModel,
    processor: Any,
    train: Dataset,
    settings: CagulFitSettings,
    gate_negatives: Dataset | None = None,
) -> CagulModel:
    """Fit ``model``'s one active adapter with `CagulTrainer` (returned in eval mode).

    Other adapters the model holds are left as they are (one adapter per forget request).
    ``gate_negatives`` are `CagulTrainer`'s (read with ``gate_fit="apart"`` only).
    """
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = CagulTrainer(
            model=model,
            args=CagulTrainingConfig(**settings.training_arguments(output_dir)),
            train_dataset=train,
            processing_class=processor,
            gate_negatives=gate_negatives if settings.gate_fit == "apart" else None,
        )
        with_bar_only(trainer).train()
    model.eval()
    return model


@dataclass
class FitRecord:
    """How one method's fit went: its measurement, trainable parameters, weights modified."""

    measurement: FitMeasurement = field(default_factory=FitMeasurement)
    trainable_parameters: int = 0
    base_weights_modified: bool = False

    def as_metrics(self) -> dict[str, Any]:
        """The record as comparison columns."""
        return {
            "fit_seconds": self.measurement.seconds,
            "peak_memory_mb": self.measurement.peak_megabytes,
            "trainable_parameters": self.trainable_parameters,
            "base_weights_modified": self.base_weights_modified,
        }


def measured_cagul_fit(
    vlm: PreTrainedModel,
    processor: Any,
    train: Dataset,
    settings: CagulFitSettings,
    gate_negatives: Dataset | None = None,
) -> tuple[CagulModel, FitRecord]:
    """`fit_cagul_adapter`, with the fit's time, peak memory, trainable parameters, and whether
    it modified ``vlm``'s weights (a digest before and after)."""
    digest = weights_digest(vlm)
    with measure() as measurement:
        model = fit_cagul_adapter(vlm, processor, train, settings, gate_negatives)
    record = FitRecord(
        measurement, model.get_nb_trainable_parameters()[0], weights_digest(vlm) != digest
    )
    return model, record


def _fit_baseline(
    method: str,
    vlm: PreTrainedModel,
    processor: Any,
    train: Dataset,
    splits: DatasetDict,
    settings: BaselineSettings,
    budget: FitSettings,
    reference_truth_ratios: Sequence[float] | None,
    max_rows: int,
) -> tuple[dict[str, Any], FitRecord]:
    """Fit ``method`` on ``vlm``, evaluate it, and leave ``vlm`` as it was."""
    digest = weights_digest(vlm)
    trainable: Any = copy.deepcopy(vlm) if settings.full else vlm
    trainable = prepare_model(trainable, full=settings.full, lora_r=settings.lora_r)
    record = FitRecord(trainable_parameters=trainable_parameters(trainable))
    torch.manual_seed(budget.seed)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = get_baseline_trainer(method)(
            trainable,
            UnlearningTrainingConfig(beta=settings.beta, **budget.training_arguments(output_dir)),
            train_dataset=train,
            processing_class=processor,
            ref_model=vlm if settings.full else None,
        )
        with_bar_only(trainer)
        with measure() as record.measurement:
            trainer.train()
    trainable.eval()
    results = evaluate_model(trainable, processor, splits, reference_truth_ratios, max_rows)
    if settings.full:
        record.base_weights_modified = weights_digest(trainable) != digest
    else:
        trainable.unload()  # removes the LoRA layers, leaving the base model
    vlm.requires_grad_(False)
    # LoRA leaves every base tensor as it was (base_weights_modified stays False): checked here,
    # as the full copy's reference is.
    if weights_digest(vlm) != digest:
        raise RuntimeError(f"Fitting {method} modified the stage-1 model's weights: a bug.")
    return results, record


def compare_baselines(
    vlm: PreTrainedModel,
    processor: Any,
    train: Dataset,
    splits: DatasetDict,
    settings: BaselineSettings,
    budget: FitSettings,
    reference_truth_ratios: Sequence[float] | None = None,
    max_rows: int = 200,
) -> tuple[dict[str, dict[str, Any]], dict[str, FitRecord]]:
    """Fit and evaluate every baseline of ``settings`` on the (bare, unwrapped) ``vlm``.

    Each baseline starts from ``vlm`` as it is: LoRA adapters are removed after each fit, and
    full fine-tuning works on a copy. ``vlm`` is checked bit-identical after every fit.

    Args:
        vlm: The stage-1 model (no CAGUL hooks: pass ``CagulModel.unload()``'s result).
        processor: Its processor.
        train: Forget and retain rows in the data contract.
        splits: The benchmark the suite evaluates on.
        settings: Which baselines, and their options.
        budget: The fit budget every baseline gets (`BaselineSettings.budget`).
        reference_truth_ratios: The gold model's forget truth ratios (for forget quality).
        max_rows: Rows per split and kind for the evaluation.

    Returns:
        ``(results, records)``: per method, the evaluation suite's metrics and its `FitRecord`.
    """
    results: dict[str, dict[str, Any]] = {}
    records: dict[str, FitRecord] = {}
    for method in tqdm(settings.methods, desc="baselines"):
        results[method], records[method] = _fit_baseline(
            method,
            vlm,
            processor,
            train,
            splits,
            settings,
            budget,
            reference_truth_ratios,
            max_rows,
        )
    return results, records


def scalar_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` without its per-row lists (truth ratios...): what tables and plots show."""
    return {key: value for key, value in results.items() if not isinstance(value, list)}


def comparison_table(
    results: Mapping[str, Mapping[str, Any]], records: Mapping[str, FitRecord]
) -> list[dict[str, Any]]:
    """One row per method that has a `FitRecord`: ``method`` and the `COMPARISON_COLUMNS`."""
    rows = []
    for method, record in records.items():
        values = {**results[method], **record.as_metrics()}
        rows.append({"method": method, **{key: values.get(key) for key in COMPARISON_COLUMNS}})
    return rows


def write_comparison(rows: Sequence[Mapping[str, Any]], output_dir: str | Path) -> list[Path]:
    """Write ``rows`` as ``comparison.md`` (a markdown table) and ``comparison.csv``."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    columns = ["method", *COMPARISON_COLUMNS]
    csv_path = directory / "comparison.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({column: row.get(column) for column in columns} for row in rows)
    markdown_path = directory / "comparison.md"
    markdown_path.write_text("\n".join(comparison_markdown(rows)) + "\n", encoding="utf-8")
    return [markdown_path, csv_path]


def run_comparison(
    vlm: PreTrainedModel,
    processor: Any,
    splits: DatasetDict,
    output_dir: str | Path,
    cagul: CagulFitSettings | None = None,
    baselines: BaselineSettings | None = None,
    max_rows: int = 200,
    title: str = "CAGUL against fine-tuning unlearning",
) -> dict[str, Any]:
    """The comparison on your own model and benchmark; writes the report into ``output_dir``.

    ``vlm`` must already know the forget set (for benchmarks like FIUBench: the model after
    their stage-1 fine-tuning). It is evaluated as it is (``"base"``), then CAGUL is fitted on
    it and evaluated, then every baseline (see `compare_baselines`), each with the budget of
    ``baselines.budget(cagul)``.

    Returns:
        The metrics written to ``metrics.json``: ``results`` per method and ``comparison``
        (the rows of ``comparison.md`` / ``comparison.csv``).
    """
    cagul = cagul or CagulFitSettings()
    baselines = baselines or BaselineSettings()
    budget = baselines.budget(cagul)
    train = training_set(splits)
    results: dict[str, dict[str, Any]] = {
        "base": evaluate_model(vlm, processor, splits, max_rows=max_rows)
    }
    model, record = measured_cagul_fit(vlm, processor, train, cagul, gate_negatives(splits))
    results["cagul"] = evaluate_model(model, processor, splits, max_rows=max_rows)
    model.save_pretrained(Path(output_dir) / "adapter")
    baseline_results, records = compare_baselines(
        model.unload(), processor, train, splits, baselines, budget, max_rows=max_rows
    )
    results.update(baseline_results)
    results = {name: scalar_metrics(values) for name, values in results.items()}
    rows = comparison_table(results, {"cagul": record, **records})
    metrics: dict[str, Any] = {
        "title": title,
        "settings": {
            "cagul": dataclasses.asdict(cagul),
            "baselines": baselines.record(budget),
            "max_rows": max_rows,
            "training rows": len(train),
        },
        "results": results,
        "comparison": rows,
    }
    write_report(output_dir, metrics)
    write_comparison(rows, output_dir)
    return metrics

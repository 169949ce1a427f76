"""``hf-cagul demo``: teach a tiny VLM fictitious people, make it forget some, measure it all.

The recipe real benchmarks (FIUBench, MLLMU-Bench, CLEAR) follow, run offline on a CPU:

1. stage 1: a tiny LLaVA (`hf_cagul.tiny`) learns the synthetic benchmark
   (`hf_cagul.data.synthetic`) by full fine-tuning; a "gold" model learns the retain people
   only (the reference for forget quality), unless ``gold=False``;
2. stage 2: a CAGUL adapter is fitted with `CagulTrainer` on the frozen stage-1 model;
3. the evaluation suite runs on the stage-1 model (adapter disabled), the adapted model and the
   gold model; robustness probes and the discriminator's metrics follow (held-out AUC, the
   share of strangers' photos it flags, the share of leaking photos it catches); the report
   (markdown, metrics.json, plots) lands in ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainingArguments

from hf_cagul.app.demo_dir import DemoDirectory
from hf_cagul.compare import (
    BaselineSettings,
    CagulFitSettings,
    compare_baselines,
    comparison_table,
    fit_cagul_adapter,
    measured_cagul_fit,
    run_arguments,
    scalar_metrics,
    with_bar_only,
    write_comparison,
)
from hf_cagul.config import CagulConfig
from hf_cagul.data import (
    SUPERVISED_TARGETS,
    CagulDataCollator,
    ForgetRetainDataCollator,
    PhotoAugmentation,
    gate_negatives,
    load_image,
)
from hf_cagul.data.synthetic import BENCHMARK_VERSION, STRANGERS_SPLIT, synthetic_benchmark
from hf_cagul.evaluation.attacks import (
    attack_photos,
    card_evaluation,
    refusals_of,
    run_attacks,
)
from hf_cagul.evaluation.probes import run_probes
from hf_cagul.evaluation.report import AttentionHeatmap, write_report
from hf_cagul.evaluation.suite import (
    discriminator_metrics,
    evaluate_model,
    leaking_photos,
    mistaken_photos,
    rows_of_kind,
)
from hf_cagul.gates import VISUAL_AND_LANGUAGE
from hf_cagul.model import CagulModel
from hf_cagul.runconfig import CLI_KEY, option_fields
from hf_cagul.tiny import tiny_vlm

MEMORISED = 0.9
"""Forget-set keyword accuracy a stage-1 model must reach to count as having memorised."""


DEMO_GATE = VISUAL_AND_LANGUAGE
"""The gate design of the demo's adapters (`DemoConfig.adapter`, ``hf-cagul demo --gate``),
chosen by the gate ablation (``bench/ablate_gate.py``); the library's default stays the
paper's."""


QUICK_PRESET: dict[str, Any] = {
    "people": 8,
    "unknown": 2,
    "forget_fraction": 0.25,
    "train_images": 4,
    "heldout_images": 4,
    "stage1_steps": 300,
    "cagul_steps": 300,
    "max_eval_rows": 64,
    "attack_queries": 20,
}
"""`DemoConfig.quick`'s values (``hf-cagul demo --quick``): a smoke test, about 80 s on 2 cores."""


@dataclass
class DemoConfig:
    """Settings of the demo run (``hf-cagul demo --help`` lists them).

    Args:
        adapter: The `CagulConfig` of every adapter the demo fits (the ablation changes its
            ``token_selection``).
        baselines: The fine-tuning baselines fitted with ``compare``, on CAGUL's budget.
    """

    output_dir: Path = field(
        default=Path("cagul-demo"), metadata={"help": "Where the report and adapter go."}
    )
    people: int = field(default=40, metadata={"help": "Fictitious people taught."})
    unknown: int = field(default=4, metadata={"help": "People never taught (the unseen split)."})
    forget_fraction: float = field(
        default=0.1, metadata={"help": "Share of the taught people to forget."}
    )
    train_images: int = field(default=6, metadata={"help": "Training photos per person."})
    heldout_images: int = field(default=8, metadata={"help": "Held-out photos per person."})
    negative_strangers: int = field(
        default=50,
        metadata={
            "help": "Strangers whose photos the gate is fitted and calibrated on as negatives "
            "(the 50 strangers it is measured on stay the same whatever this is)."
        },
    )
    stage1_steps: int = field(
        default=2800, metadata={"help": "Steps of stage 1 (full fine-tuning on everyone)."}
    )
    stage1_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of stage 1."}
    )
    cagul_steps: int = field(default=1000, metadata={"help": "Steps of each CAGUL fit."})
    cagul_learning_rate: float = field(
        default=3e-3, metadata={"help": "Learning rate of each CAGUL fit."}
    )
    gate_fit: Literal["joint", "apart"] = field(
        default="apart",
        metadata={
            "help": "Fit the gate with the encoder ('joint', the paper's) or first and alone, "
            "on cached features ('apart'; see CagulTrainingConfig.gate_fit)."
        },
    )
    gate_target_fpr: float | None = field(
        default=0.02,
        metadata={
            "help": "False-positive rate the gate's threshold is calibrated to, on negatives "
            "held out from its fit (gate_fit='apart'; None: threshold 0.5)."
        },
    )
    gate_every_question: bool = field(
        default=True,
        metadata={
            "help": "Cache each forget photo and variant with every question of its rows when "
            "fitting the gate apart (CagulTrainingConfig.gate_every_question)."
        },
    )
    gate_kept_as_negatives: bool = field(
        default=False,
        metadata={
            "help": "Fit the forget photos' visual questions as negatives of the gate, so the bare "
            "model answers them (CagulTrainingConfig.gate_kept_as_negatives)."
        },
    )
    gate_augmentation: str = field(
        default="photo",
        metadata={
            "help": "How the gate's cached variants are drawn: 'photo' or 'views' (also "
            "flips, rotations and colour shifts; CagulTrainingConfig.gate_augmentation)."
        },
    )
    depth_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of CAGUL's depth term (NPO on the true answers; 0: off)."},
    )
    gold: bool = field(
        default=True, metadata={"help": "Also teach the retain-only (gold) reference model."}
    )
    ablation: bool = field(
        default=False, metadata={"help": "Also fit random / highest-attention selection."}
    )
    max_eval_rows: int = field(default=160, metadata={"help": "Evaluated rows per split and kind."})
    attack_queries: int = field(
        default=200,
        metadata={
            "help": "Queries per photo of the black-box attacker on the gate (the report's "
            "'Attacks on the gate', with white-box PGD at 1-8/255; 0: no attacks)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the benchmark, models and fits."})
    compare: bool = field(
        default=False, metadata={"help": "Also fit and evaluate the fine-tuning baselines."}
    )
    adapter: CagulConfig = field(
        default_factory=lambda: CagulConfig(gate=DEMO_GATE), metadata={CLI_KEY: False}
    )
    baselines: BaselineSettings = field(default_factory=BaselineSettings, metadata={CLI_KEY: False})

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The smoke-test preset (`QUICK_PRESET`): fewer people, images and steps."""
        return cls(**{**QUICK_PRESET, **overrides})

    def benchmark(self) -> DatasetDict:
        """The synthetic benchmark of these settings (`synthetic_benchmark`)."""
        return synthetic_benchmark(
            num_people=self.people,
            num_unknown=self.unknown,
            forget_fraction=self.forget_fraction,
            train_images=self.train_images,
            heldout_images=self.heldout_images,
            seed=self.seed,
            num_negative_strangers=self.negative_strangers,
        )

    def settings(self, *leave_out: str) -> dict[str, Any]:
        """The settings as a report shows them: every option of the run and of its adapter
        (but the baselines, reported with their budget), without ``leave_out``."""
        values = {
            item.name: getattr(self, item.name)
            for item in option_fields(DemoConfig)
            if item.name not in leave_out
        }
        adapter = {
            item.name: getattr(self.adapter, item.name) for item in option_fields(CagulConfig)
        }
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in {**values, **adapter}.items()
        }


def _supervised_collator(processor: Any, seed: int) -> ForgetRetainDataCollator:
    """Every row's target is its answer, whatever its split: plain supervised fine-tuning
    (`SUPERVISED_TARGETS`: no forget flags, which `Trainer` would pass to the model).

    Photos are augmented: without it a tiny VLM memorises the training photos and does not
    recognise the same people on new ones (held-out accuracy 0.45 -> 0.90 on the demo).
    """
    return ForgetRetainDataCollator(
        processor, augment=PhotoAugmentation(seed=seed), policy=SUPERVISED_TARGETS
    )


def teach(config: DemoConfig, dataset: Dataset, description: str) -> tuple[PreTrainedModel, Any]:
    """Stage 1: a fresh tiny LLaVA fine-tuned on ``dataset`` (full weights)."""
    vlm, processor = tiny_vlm("llava", seed=config.seed, num_hidden_layers=4, hidden_size=128)
    vlm.train()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=vlm,
            args=TrainingArguments(
                max_steps=config.stage1_steps,
                per_device_train_batch_size=32,
                learning_rate=config.stage1_learning_rate,
                warmup_steps=min(50, config.stage1_steps // 10),
                lr_scheduler_type="cosine",
                remove_unused_columns=False,
                run_name=description,
                **run_arguments(output_dir, config.seed, use_cpu=True),
            ),
            train_dataset=dataset,
            data_collator=_supervised_collator(processor, config.seed),
        )
        with_bar_only(trainer).train()
    return vlm.eval(), processor


def fit_cagul(
    config: DemoConfig,
    vlm: PreTrainedModel,
    processor: Any,
    dataset: Dataset,
    selection: Literal["lowest", "random", "highest"],
    negatives: Dataset | None = None,
) -> CagulModel:
    """Stage 2: a CAGUL adapter fitted on the frozen ``vlm`` (CPU, photos augmented);
    ``negatives`` are the gate's (`gate_negatives`), for a gate fitted apart."""
    return fit_cagul_adapter(
        vlm, processor, dataset, cagul_fit_settings(config, selection), negatives
    )


def cagul_fit_settings(
    config: DemoConfig, selection: Literal["lowest", "random", "highest"] | None = None
) -> CagulFitSettings:
    """How the demo fits each CAGUL adapter: CPU, batch 16, photos augmented, ``config``'s
    adapter (with ``selection`` as its ``token_selection`` when given: the ablation)."""
    adapter = config.adapter
    if selection is not None:
        adapter = dataclasses.replace(adapter, token_selection=selection)
    return CagulFitSettings(
        steps=config.cagul_steps,
        batch_size=16,
        learning_rate=config.cagul_learning_rate,
        seed=config.seed,
        use_cpu=True,
        adapter=adapter,
        gate_fit=config.gate_fit,
        gate_target_fpr=config.gate_target_fpr if config.gate_fit == "apart" else None,
        depth_weight=config.depth_weight,
        gate_every_question=config.gate_every_question,
        gate_kept_as_negatives=config.gate_kept_as_negatives,
        gate_augmentation=config.gate_augmentation,
    )


APP_EXAMPLES = 4
"""Held-out photos of each kind (forget, retain) the demo keeps for ``hf-cagul app``."""


def save_for_the_app(
    config: DemoConfig,
    model: CagulModel,
    processor: Any,
    splits: DatasetDict,
    evaluation: Mapping[str, float] | None = None,
) -> DemoDirectory:
    """Write what ``hf-cagul app --demo-dir`` shows: the stage-1 VLM and its processor, the
    adapter (``evaluation`` in its model card), and a few held-out photos (metrics.json is
    written with the report)."""
    directory = DemoDirectory(Path(config.output_dir))
    model.base_model.save_pretrained(directory.stage1)
    processor.save_pretrained(directory.stage1)
    model.save_pretrained(directory.adapter, evaluation=evaluation)
    per_photo = [one_row_per_photo(splits[name]) for name in ("forget_heldout", "retain_heldout")]
    photos = concatenate_datasets(
        [rows.select(range(min(APP_EXAMPLES, len(rows)))) for rows in per_photo]
    )
    directory.save_examples(photos["image"], photos["question"])
    return directory


def one_row_per_photo(dataset: Dataset) -> Dataset:
    """The first row of each photo (for gate metrics: one decision per photo)."""
    first = dataset["question"][0]
    return dataset.filter(lambda row: row["question"] == first)


def attention_heatmap(model: CagulModel, processor: Any, rows: Dataset) -> AttentionHeatmap:
    """Scores and rewritten tokens of the first forget photo, as the adapter saw them."""
    row = rows[0]
    inputs = CagulDataCollator(processor).prompts([row["image"]], [row["question"]])
    with torch.no_grad(), model.force_gate(True), model.trace() as traces:
        model(**inputs)
    trace = traces[0]
    assert trace.scores is not None and trace.selected is not None
    return AttentionHeatmap(
        image=load_image(row["image"]),
        scores=trace.scores.tolist(),
        selected=(trace.selected - trace.start).tolist(),
        title=f"{row['subject']}: '{row['question']}'",
    )


def _check(
    name: str, value: float | None, low: float | None = None, high: float | None = None
) -> dict[str, Any]:
    """A target: ``value`` must lie in ``[low, high]`` (a missing bound is no bound)."""
    met = (
        value is not None
        and not math.isnan(value)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )
    if low is not None and high is not None:
        target = f"{low} to {high}"
    else:
        target = f">= {low}" if low is not None else f"<= {high}"
    return {"name": name, "value": value, "target": target, "met": met}


def demo_targets(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets for the default run, each with its measured value.

    Forgetting is judged on held-out photos as well as training ones, and in depth (membership
    inference and truth ratio against the gold model that never saw the forget people); the
    gate by the photos that would leak (the base model answers them) and by the false
    positives it costs on retain photos and on strangers.
    """
    results = metrics["results"]
    base, cagul, gold = results["base"], results["cagul"], results.get("gold", {})
    gate = metrics.get("discriminator", {})

    def relative(key: str) -> float | None:
        before, after = base.get(key), cagul.get(key)
        return None if not before or after is None else after / before

    truth_gap = None
    if gold.get("forget_truth_ratio") is not None and cagul.get("forget_truth_ratio") is not None:
        truth_gap = abs(cagul["forget_truth_ratio"] - gold["forget_truth_ratio"])
    return [
        _check("stage-1 forget keyword accuracy", base.get("forget_keyword"), low=MEMORISED),
        _check("forget keyword accuracy, training photos", cagul.get("forget_keyword"), high=0.02),
        _check(
            "forget keyword accuracy, held-out photos",
            cagul.get("forget_heldout_keyword"),
            high=0.05,
        ),
        _check("retain keyword accuracy / before", relative("retain_keyword"), low=0.98),
        _check(
            "visual accuracy on forget photos / before",
            relative("forget_visual_keyword"),
            low=0.98,
        ),
        _check("gate: leaking photos flagged", gate.get("leak_recall"), low=0.95),
        _check("gate: FPR on held-out retain photos", gate.get("fpr"), high=0.02),
        _check("gate: FPR on strangers' photos", gate.get("stranger_fpr"), high=0.02),
        _check("MIA AUC, forget vs unseen", cagul.get("mia_auc"), low=0.4, high=0.6),
        _check("forget truth ratio, distance to gold", truth_gap, high=0.1),
        *[
            _check(f"gate: {name} evasion", row.get("evasion_rate"), high=0.05)
            for name, row in metrics.get("attacks", {}).get("rows", {}).items()
            if name.startswith("black-box") and name.endswith("(answer)")
        ],
    ]


def gate_photos(model: Any, processor: Any, splits: DatasetDict) -> dict[str, Any]:
    """The `discriminator_metrics` keyword arguments on the demo's benchmark: one row per
    held-out photo of forget and of retain people, the strangers' photos, which forget photos
    the bare model leaks and which strangers it takes for a forget person (``model``'s
    adapters, if any, are disabled for those two)."""
    forget = one_row_per_photo(splits["forget_heldout"])
    strangers = one_row_per_photo(splits[STRANGERS_SPLIT])
    return {
        "forget_photos": forget,
        "retain_photos": one_row_per_photo(splits["retain_heldout"]),
        "stranger_photos": strangers,
        "leaks": leaking_photos(model, processor, forget),
        "mistaken": mistaken_photos(model, processor, strangers, splits["forget"]),
    }


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo; returns the metrics it wrote to ``config.output_dir``."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    splits = config.benchmark()
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    negatives = gate_negatives(splits)  # the gate's, for every fit of this run

    clock = time.perf_counter()
    vlm, processor = teach(config, train, "stage 1")
    timings["stage 1 (full fine-tuning)"] = time.perf_counter() - clock
    gold = None
    if config.gold:
        clock = time.perf_counter()
        gold, _ = teach(config, splits["retain"], "gold (retain only)")
        timings["gold model (retain only)"] = time.perf_counter() - clock

    model, cagul_fit = measured_cagul_fit(
        vlm, processor, train, cagul_fit_settings(config), negatives
    )
    timings["CAGUL fit"] = cagul_fit.measurement.seconds

    clock = time.perf_counter()
    evaluated: dict[str, dict[str, Any]] = {}
    reference = None
    with tqdm(total=4 if gold is not None else 3, desc="evaluating") as bar:
        if gold is not None:
            evaluated["gold"] = evaluate_model(
                gold, processor, splits, max_rows=config.max_eval_rows
            )
            reference = evaluated["gold"].get("forget_truth_ratios")
            bar.update()
        with model.disable_adapter():
            evaluated["base"] = evaluate_model(
                model, processor, splits, reference, max_rows=config.max_eval_rows
            )
        bar.update()
        evaluated["cagul"] = evaluate_model(
            model, processor, splits, reference, max_rows=config.max_eval_rows
        )
        bar.update()
        forget_private = rows_of_kind(splits["forget"], "private", config.max_eval_rows)
        with model.disable_adapter():
            base_probes = run_probes({"base": model}, processor, forget_private, progress=False)
        cagul_probes = run_probes({"cagul": model}, processor, forget_private, progress=False)
        probes = {name: {**base_probes[name], **cagul_probes[name]} for name in cagul_probes}
        bar.update()
    gate = discriminator_metrics(model, processor, **gate_photos(model, processor, splits))
    timings["evaluation"] = time.perf_counter() - clock
    attacks = None
    if config.attack_queries:
        clock = time.perf_counter()
        attacks = run_attacks(
            model,
            processor,
            attack_photos(splits["forget_heldout"], config.max_eval_rows),
            queries=config.attack_queries,
            seed=config.seed,
            refusals=refusals_of(splits["forget"]),
        )
        timings["attacks on the gate"] = time.perf_counter() - clock

    metrics: dict[str, Any] = {
        "title": "hf_cagul demo: forgetting fictitious people in a tiny LLaVA",
        "settings": config.settings(),
        "benchmark_version": BENCHMARK_VERSION,
        "stage1": {
            "forget_keyword_accuracy": evaluated["base"].get("forget_keyword"),
            "memorised": (evaluated["base"].get("forget_keyword") or 0.0) >= MEMORISED,
            "threshold": MEMORISED,
        },
        "results": {name: scalar_metrics(values) for name, values in evaluated.items()},
        "discriminator": gate,
        "robustness": probes,
        **({"attacks": attacks} if attacks is not None else {}),
    }
    heatmap = attention_heatmap(model, processor, rows_of_kind(splits["forget"], "private", 1))
    card = card_evaluation(attacks) if attacks is not None else {}
    heldout = evaluated["cagul"].get("forget_heldout_keyword")
    if heldout is not None:
        card = {"forget keyword accuracy, held-out photos": heldout, **card}
    save_for_the_app(config, model, processor, splits, card)
    bare = model.unload()
    if config.ablation:
        clock = time.perf_counter()
        ablation = {"lowest attention": metrics["results"]["cagul"]}
        variants: tuple[tuple[Literal["random", "highest"], str], ...] = (
            ("random", "random"),
            ("highest", "highest attention"),
        )
        for selection, label in variants:
            variant = fit_cagul(config, bare, processor, train, selection, negatives)
            ablation[label] = scalar_metrics(
                evaluate_model(variant, processor, splits, reference, config.max_eval_rows)
            )
            bare = variant.unload()
        metrics["ablation"] = {
            label: {
                key: values.get(key)
                for key in ("forget_keyword", "forget_heldout_keyword", "retain_keyword")
            }
            for label, values in ablation.items()
        }
        timings["ablation"] = time.perf_counter() - clock
    if config.compare:
        clock = time.perf_counter()
        budget = config.baselines.budget(cagul_fit_settings(config))
        metrics["settings"]["baselines"] = config.baselines.record(budget)
        baselines, records = compare_baselines(
            bare,
            processor,
            train,
            splits,
            config.baselines,
            budget,
            reference,
            config.max_eval_rows,
        )
        metrics["results"].update(
            {name: scalar_metrics(values) for name, values in baselines.items()}
        )
        metrics["comparison"] = comparison_table(
            metrics["results"], {"cagul": cagul_fit, **records}
        )
        write_comparison(metrics["comparison"], config.output_dir)
        timings["baselines (fit + evaluation)"] = time.perf_counter() - clock
    metrics["targets"] = demo_targets(metrics)
    timings["total"] = time.perf_counter() - started
    metrics["timings"] = timings
    write_report(config.output_dir, metrics, heatmap)
    return metrics


def print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    """A few lines for the terminal; the report has the rest."""
    red, green, reset = "\033[31m", "\033[32m", "\033[0m"
    stage1 = metrics["stage1"]
    if not stage1["memorised"]:
        print(
            f"{red}WARNING: stage 1 did not memorise the forget people (keyword accuracy "
            f"{stage1['forget_keyword_accuracy']:.3f} < {stage1['threshold']}): the unlearning "
            f"numbers below say little.{reset}"
        )
    width = max((len(target["name"]) for target in metrics["targets"]), default=0)
    for target in metrics["targets"]:
        mark = f"{green}met{reset}" if target["met"] else f"{red}MISSED{reset}"
        measured = target["value"]
        value = "n/a" if measured is None or math.isnan(measured) else f"{measured:.3f}"
        print(f"  {target['name']:<{width}} {value:>7}  target {target['target']:<8} {mark}")
    gate = gate_summary(metrics.get("discriminator", {}))
    if gate:
        print(f"  {gate}")
    print(f"total {metrics['timings']['total']:.0f} s. Report: {output_dir}/report.md")


def gate_summary(gate: dict[str, Any]) -> str:
    """One line on what the gate lets through (strangers it flags, leaking photos it misses),
    from `discriminator_metrics`'s ``stranger_*`` and ``leak*`` keys; empty without them."""
    parts = []
    if "stranger_fpr" in gate:
        parts.append(
            f"flags {_percent(gate['stranger_fpr'])} of {gate['stranger_photos']} strangers' photos"
        )
    if "leak_recall" in gate:
        parts.append(
            f"catches {_percent(gate['leak_recall'])} of the {gate['leaking_photos']} held-out "
            "forget photos the base model answers"
        )
    if "mistaken_strangers" in gate:
        parts.append(
            f"the base model takes {gate['mistaken_strangers']} strangers' photos for a forget "
            f"person, and the gate flags {_percent(gate['mistaken_recall'])} of them, "
            f"{_percent(gate['stranger_fpr_unmistaken'])} of the others"
        )
    return f"gate: {'; '.join(parts)}" if parts else ""


def _percent(share: float | None) -> str:
    return "n/a" if share is None or math.isnan(share) else f"{100 * share:.1f}%"

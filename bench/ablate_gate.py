"""Ablation of the gate: its input, its negatives and its calibration, over seeds.

For each seed, the demo's synthetic benchmark and its stage-1 tiny LLaVA (taught once and
cached under ``--cache``, shared with ``bench/ablate_depth.py``). Then, for each gate input, a
gate is fitted apart from the encoder on cached features (`hf_cagul.trainer.gate_fit.fit_gate`:
the photos and augmented variants of them, class-balanced BCE), with two kinds of negatives:

* ``retain``: the retain people's training photos (the default when a dataset has no
  ``negatives`` split);
* ``retain+strangers``: those and the ``negatives`` split's photos of people nobody was taught.

A quarter of the negatives is held out, never fitted on, to calibrate the threshold to a
false-positive rate of ``--target-fpr``; every gate is measured at that calibrated threshold
and at the fixed 0.5. Measured on photos never fitted on (`discriminator_metrics`): held-out
forget photos against held-out retain photos (AUC, TPR, FPR), the ``strangers`` split (FPR) and
``leak recall``, the share of held-out forget photos the base model answers that the gate
flags. Printed as a markdown table, each figure the mean ± standard deviation over the seeds::

    python bench/ablate_gate.py                         # seeds 0 1 2, the demo's settings
    python bench/ablate_gate.py --quick --seeds 0 --stage1-steps 50

With ``--fits``, the gate is instead the demo's own (its design, its negatives and its fit
settings, `hf_cagul.demo.cagul_fit_settings`), fitted once per fit variant: ``demo`` as it is,
or ``FIELD=VALUE,...`` overriding `GateFitSettings` fields (``weight_decay=0.1``,
``epochs=30,variants=16``) or `CagulConfig` fields (``gate_members=5``: an ensemble), a part
``unmistaken`` dropping the negatives the base model takes for a forget person
(`mistaken_photos`), each measured at its calibrated threshold. With
``--fit-seeds N`` each variant is fitted N times per seed, with other initialisations,
augmentations and calibration splits of the gate, and the table pools seeds and fit seeds::

    python bench/ablate_gate.py --fits demo weight_decay=0.1 epochs=30
    python bench/ablate_gate.py --seeds 0 --fits demo unmistaken --fit-seeds 4
    python bench/ablate_gate.py --fits demo gate_members=5 --fit-seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from ablation import cached_teach, cell, parse_overrides, report

from hf_cagul import CagulConfig, CagulTrainingConfig, get_cagul_model
from hf_cagul.data import NEGATIVES_SPLIT, CagulDataCollator, gate_negatives
from hf_cagul.demo import DemoConfig, cagul_fit_settings, gate_photos
from hf_cagul.evaluation.suite import discriminator_metrics, mistaken_photos
from hf_cagul.trainer.gate_fit import (
    GateFitSettings,
    fit_gate,
    forget_photos_of,
    negative_photos_of,
    unique_photos,
)

COLUMNS = (
    ("AUC", "auc"),
    ("TPR", "tpr"),
    ("FPR retain", "fpr"),
    ("FPR strangers", "stranger_fpr"),
    ("leak recall", "leak_recall"),
    ("strangers taken for forget people", "mistaken_strangers"),
    ("flagged of those", "mistaken_recall"),
    ("FPR other strangers", "stranger_fpr_unmistaken"),
)


def gate_inputs(depth: int) -> dict[str, dict[str, Any]]:
    """The gate designs compared, by label: the `CagulConfig` fields of each."""
    return {
        "visual tokens (paper)": {"gate": "visual_tokens"},
        f"LM state, layer {depth // 2}": {"gate": "language_state", "gate_layer": depth // 2},
        f"LM state, layer {depth - 1} (last)": {"gate": "language_state"},
        f"visual tokens + LM state, layer {depth - 1}": {"gate": "visual_and_language_state"},
    }


def photos(rows: Any) -> list[Any]:
    """The distinct photos of ``rows`` with a question each."""
    return unique_photos(rows["image"], rows["question"])


def run_seed(config: DemoConfig, cache: Path, target_fpr: float) -> dict[str, dict[str, Any]]:
    """Every gate variant's metrics on one seed's benchmark."""
    splits = config.benchmark()
    vlm, processor = cached_teach(config, cache, gold=False)
    measured = gate_photos(vlm, processor, splits)
    negatives = {
        "retain": photos(splits["retain"]),
        "retain+strangers": photos(splits["retain"]) + photos(splits[NEGATIVES_SPLIT]),
    }
    forget = photos(splits["forget"])
    collator = CagulDataCollator(processor)
    depth = vlm.config.get_text_config().num_hidden_layers
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as output_dir:
        settings = CagulTrainingConfig(
            output_dir=output_dir,
            gate_fit="apart",
            gate_target_fpr=target_fpr,
            seed=config.seed,
            report_to=[],
        ).gate_fit_settings()
    for label, fields in gate_inputs(depth).items():
        for kind, negative_photos in negatives.items():
            model = get_cagul_model(vlm, CagulConfig(**fields))
            clock = time.perf_counter()
            report = fit_gate(model, collator, forget, negative_photos, settings)
            seconds = time.perf_counter() - clock
            assert report.calibration is not None
            fitted = model.active_config
            for threshold, name in ((report.calibration["threshold"], "calibrated"), (0.5, "0.5")):
                model.cagul_config["default"] = dataclasses.replace(
                    fitted, gate_threshold=threshold
                )
                metrics = discriminator_metrics(model, processor, **measured)
                results[f"{label} | {kind} | {name}"] = {**metrics, "fit_seconds": seconds}
            vlm = model.unload()
    return results


UNMISTAKEN = "unmistaken"
"""A fit variant's part that drops the negatives the base model takes for a forget person."""


def parse_fit(fit: str) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """``"demo"`` -> ``({}, {}, False)``; ``"FIELD=VALUE,..."`` -> the `GateFitSettings`
    overrides, the `CagulConfig` overrides (``gate_members=5``), and whether a part
    ``unmistaken`` asks that the mistaken negatives be dropped."""
    if fit == "demo":
        return {}, {}, False
    kinds = (
        {item.name for item in dataclasses.fields(GateFitSettings)},
        {item.name for item in dataclasses.fields(CagulConfig)},
    )
    parts = fit.split(",")
    fitted, adapter = parse_overrides(
        [part for part in parts if part != UNMISTAKEN],
        kinds,
        f"in fit {fit!r}, write 'demo' or FIELD=VALUE,... with FIELD one of "
        f"{', '.join(sorted(kinds[0]))} (GateFitSettings, e.g. weight_decay=0.1) or a "
        f"CagulConfig field (e.g. gate_members=5), or {UNMISTAKEN!r}.",
    )
    unmistaken = UNMISTAKEN in parts
    return fitted, adapter, unmistaken


def run_fits(
    config: DemoConfig, cache: Path, fits: list[str], fit_seeds: int = 1
) -> list[dict[str, dict[str, Any]]]:
    """The demo's gate fitted once per fit variant and fit seed on one seed's benchmark, each
    measured at its calibrated threshold: one result per fit seed. Fit seed ``i`` seeds the
    gate's initialisation, its augmentation and its calibration split with ``config.seed + 1000
    * i`` (``i = 0``: the demo's own seeds)."""
    splits = config.benchmark()
    vlm, processor = cached_teach(config, cache, gold=False)
    measured = gate_photos(vlm, processor, splits)
    collator = CagulDataCollator(processor)
    forget = forget_photos_of(splits["forget"], collator)
    taught = [*splits["forget"]["subject"], *splits["retain"]["subject"]]
    negatives = negative_photos_of(gate_negatives(splits), taught)
    parsed = {fit: parse_fit(fit) for fit in fits}
    unmistaken = negatives
    if any(drop for *_, drop in parsed.values()):  # a generation pass over every negative
        asked = datasets.Dataset.from_dict(
            {"image": [p.image for p in negatives], "question": [p.question for p in negatives]}
        )
        mistaken = mistaken_photos(vlm, processor, asked, splits["forget"])
        unmistaken = [photo for photo, wrong in zip(negatives, mistaken, strict=True) if not wrong]
        print(f"seed {config.seed}: {sum(mistaken)} of {len(negatives)} negatives mistaken")
    fit_settings = cagul_fit_settings(config)
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = {**fit_settings.training_arguments(output_dir), "report_to": []}
        settings = CagulTrainingConfig(**arguments).gate_fit_settings()
    per_fit_seed: list[dict[str, dict[str, Any]]] = []
    for index in range(fit_seeds):
        seed = config.seed + 1000 * index
        results: dict[str, dict[str, Any]] = {}
        for fit, (overrides, adapter, drop) in parsed.items():
            torch.manual_seed(seed)  # as `hf_cagul.compare.train_cagul` seeds the adapter
            model = get_cagul_model(vlm, dataclasses.replace(fit_settings.adapter, **adapter))
            clock = time.perf_counter()
            report = fit_gate(
                model,
                collator,
                forget,
                unmistaken if drop else negatives,
                dataclasses.replace(settings, seed=seed, **overrides),
            )
            seconds = time.perf_counter() - clock
            assert report.calibration is not None
            model.cagul_config["default"] = dataclasses.replace(
                model.active_config, gate_threshold=report.calibration["threshold"]
            )
            metrics = discriminator_metrics(model, processor, **measured)
            results[f"{config.adapter.gate} | {fit} | calibrated"] = {
                **metrics,
                "fit_seconds": seconds,
            }
            print(f"seed {config.seed}, fit seed {seed}, {fit}: {json.dumps(metrics)}")
            vlm = model.unload()
        per_fit_seed.append(results)
    return per_fit_seed


def markdown_table(per_seed: list[dict[str, dict[str, Any]]]) -> list[str]:
    """One row per variant (gate input, negatives, threshold), one column per metric."""
    header = [
        "gate input",
        "negatives or fit",
        "threshold",
        *(title for title, _ in COLUMNS),
        "fit s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in per_seed[0]:
        values = [cell([seed[name].get(key) for seed in per_seed]) for _, key in COLUMNS]
        seconds = cell([seed[name]["fit_seconds"] for seed in per_seed])
        lines.append("| " + " | ".join([*name.split(" | "), *values, seconds]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="DemoConfig.quick (a smoke test)")
    parser.add_argument("--stage1-steps", type=int, help="override the preset's stage-1 steps")
    parser.add_argument("--target-fpr", type=float, default=0.02)
    parser.add_argument(
        "--negative-strangers",
        type=int,
        help="override the demo's strangers fitted and calibrated on as negatives (50)",
    )
    parser.add_argument("--cache", type=Path, default=Path("outputs/stage1"))
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument(
        "--fits",
        nargs="+",
        help="the demo's gate, once per fit variant: 'demo' or FIELD=VALUE,... (GateFitSettings)",
    )
    parser.add_argument(
        "--fit-seeds",
        type=int,
        default=1,
        help="with --fits: fit each variant this many times per seed, with other gate "
        "initialisations, augmentations and calibration splits (the table pools them)",
    )
    options = parser.parse_args()
    for fit in options.fits or ():
        parse_fit(fit)  # a typo fails here, before any teaching
    datasets.disable_progress_bars()
    overrides = {} if options.stage1_steps is None else {"stage1_steps": options.stage1_steps}
    if options.negative_strangers is not None:
        overrides["negative_strangers"] = options.negative_strangers
    started = time.perf_counter()
    per_seed = []
    for seed in options.seeds:
        config = (DemoConfig.quick if options.quick else DemoConfig)(seed=seed, **overrides)
        if options.fits:
            per_seed += run_fits(config, options.cache, options.fits, options.fit_seeds)
        else:
            per_seed.append(run_seed(config, options.cache, options.target_fpr))
    seeds = ", ".join(map(str, options.seeds))
    target = "the demo's FPR" if options.fits else f"FPR {options.target_fpr}"
    pooled = f" x {options.fit_seeds} fit seeds" if options.fits else ""
    title = (
        f"Gate ablation, seeds {seeds}{pooled} ({'quick' if options.quick else 'demo'} "
        f"settings), calibrated to {target} on held-out negatives "
        f"({config.negative_strangers} strangers among them): mean ± std over them."
    )
    report(title, markdown_table(per_seed), started, options.output)


if __name__ == "__main__":
    main()

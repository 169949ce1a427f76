"""Attacks on the gate of the demo's CAGUL adapter, over seeds: what an attacker gets past it.

For each seed, the demo's stage-1 tiny LLaVA (cached under ``--cache``, shared with the other
ablations) gets a CAGUL adapter fitted exactly as the demo fits it (`hf_cagul.demo
.cagul_fit_settings`; ``--gate`` changes the gate's input, ``--fit FIELD=VALUE`` any
`CagulFitSettings` or `CagulConfig` field of the fit); the adapter is saved under
``--adapters`` and reloaded by a rerun. Then `hf_cagul.evaluation.attacks.run_attacks` attacks
it on the held-out photos of the forget people: white-box PGD on the gate's logit at each
``--budgets`` (in 1/255), and the black-box attacker with ``--queries`` random views, seeing the
answers or the gate's probability. Printed: for each attack, mean +- standard deviation over the
seeds of the evasion rate (of the photos the gate flags as they are, the share it no longer
flags once attacked), the served model's forget keyword accuracy on the attacked photos (leak),
the bare model's on the same photos, and the queries sent; then the smallest white-box budget at
which more than half the flagged photos evade, per seed; and the gate's FPR on the strangers'
photos and on the held-out retain photos (what a hardening costs)::

    python bench/attacks.py                                  # seeds 0 1 2, the demo's gate
    python bench/attacks.py --gate visual_tokens             # the paper's gate input
    python bench/attacks.py --fit gate_augmentation=views     # the gate fitted on the views
    python bench/attacks.py --seeds 0 --queries 20 --budgets 2 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ablation import cached_teach, cell, parse_overrides, report
from datasets import concatenate_datasets

from hf_cagul import CagulConfig, CagulModel
from hf_cagul.compare import CagulFitSettings, fit_cagul_adapter
from hf_cagul.data import gate_negatives
from hf_cagul.demo import DemoConfig, cagul_fit_settings, gate_photos
from hf_cagul.evaluation.attacks import attack_photos, refusals_of, run_attacks
from hf_cagul.evaluation.suite import discriminator_metrics

COLUMNS = (
    ("evasion rate", "evasion_rate"),
    ("flagged", "flagged"),
    ("leak (served)", "leak"),
    ("leak (bare model)", "base_leak"),
    ("queries", "queries"),
)


def parse_fit(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``FIELD=VALUE`` items as (`CagulFitSettings` fields, `CagulConfig` fields); values are
    JSON (``gate_target_fpr=0.05``, ``gate_every_question=false``) or bare strings
    (``gate_augmentation=views``)."""
    kinds = (
        {f.name for f in fields(CagulFitSettings)} - {"adapter"},
        {f.name for f in fields(CagulConfig)},
    )
    fit, adapter = parse_overrides(
        items,
        kinds,
        f"write FIELD=VALUE with FIELD a CagulFitSettings field ({', '.join(sorted(kinds[0]))}) "
        "or a CagulConfig field (e.g. gate_members=5).",
    )
    return fit, adapter


def fitted_adapter(
    config: DemoConfig, cache: Path, adapters: Path, fit: dict[str, Any], adapter: dict[str, Any]
) -> tuple[CagulModel, Any, dict[str, Any], float]:
    """The seed's stage-1 model with its CAGUL adapter (fitted once, then reloaded), the
    benchmark's splits, and the fit's seconds (0 when reloaded)."""
    splits = config.benchmark()
    vlm, processor = cached_teach(config, cache, gold=False)
    settings = cagul_fit_settings(config)
    settings = replace(settings, adapter=replace(settings.adapter, **adapter), **fit)
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:12]
    directory = adapters / f"seed{config.seed}-{key}"
    if (directory / "cagul_config.json").is_file():
        return CagulModel.from_pretrained(vlm, directory), processor, splits, 0.0
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    clock = time.perf_counter()
    model = fit_cagul_adapter(vlm, processor, train, settings, gate_negatives(splits))
    seconds = time.perf_counter() - clock
    model.save_pretrained(directory)
    return model, processor, splits, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gate", help="CagulConfig.gate of the fit (default: the demo's)")
    parser.add_argument("--fit", nargs="*", default=[], help="FIELD=VALUE of the fit")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--attack-seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("outputs/stage1"))
    parser.add_argument("--adapters", type=Path, default=Path("outputs/attacks"))
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    options = parser.parse_args()
    fit, adapter = parse_fit(options.fit)
    if options.gate is not None:
        adapter["gate"] = options.gate
    started = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    for seed in options.seeds:
        config = DemoConfig(seed=seed)
        model, processor, splits, seconds = fitted_adapter(
            config, options.cache, options.adapters, fit, adapter
        )
        attacks = run_attacks(
            model,
            processor,
            attack_photos(splits["forget_heldout"]),
            budgets=options.budgets,
            steps=options.steps,
            queries=options.queries,
            seed=options.attack_seed,
            refusals=refusals_of(splits["forget"]),
        )
        gate = discriminator_metrics(model, processor, **gate_photos(model, processor, splits))
        attacks["gate"] = {key: gate[key] for key in ("fpr", "stranger_fpr", "leak_recall")}
        attacks["fit_seconds"] = seconds
        print(f"seed {seed}: {json.dumps(attacks)}", flush=True)
        per_seed.append(attacks)
    table = ["| attack | " + " | ".join(name for name, _ in COLUMNS) + " |"]
    table.append("|---" * (len(COLUMNS) + 1) + "|")
    for attack in per_seed[0]["rows"]:
        cells = [cell([seed["rows"][attack][key] for seed in per_seed]) for _, key in COLUMNS]
        table.append(f"| {attack} | " + " | ".join(cells) + " |")
    halves = ", ".join(str(seed["white_box_half_budget"]) for seed in per_seed)
    table += [
        "",
        f"smallest white-box budget (/255) with more than half evading, per seed: {halves}",
        "gate FPR on held-out retain photos: "
        + cell([seed["gate"]["fpr"] for seed in per_seed])
        + "; on strangers: "
        + cell([seed["gate"]["stranger_fpr"] for seed in per_seed])
        + "; leak recall (clean photos): "
        + cell([seed["gate"]["leak_recall"] for seed in per_seed]),
    ]
    gate = adapter.get("gate", DemoConfig().adapter.gate)
    title = (
        f"Attacks on the gate, seeds {', '.join(map(str, options.seeds))} (demo settings, gate "
        f"{gate}{', fit ' + json.dumps(fit | adapter) if fit or adapter else ''}; "
        f"{options.steps} PGD steps, {options.queries} black-box queries): mean ± std over seeds."
    )
    report(title, table, started, options.output)


if __name__ == "__main__":
    main()

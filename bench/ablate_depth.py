"""Ablation of CAGUL's depth term: fits with and without it, over seeds, on the demo's benchmark.

For each seed, the demo's synthetic benchmark and its stage-1 tiny LLaVA (`hf_cagul.demo.teach`,
full fine-tuning on every taught person) and, unless ``--no-gold``, the gold model (taught the
retain people only: the reference of membership inference and truth ratio); both are cached
under ``--cache`` with ``save_pretrained``, so a rerun teaches nothing. Then one CAGUL adapter
per variant is fitted on the frozen stage-1 model exactly as the demo fits it
(`hf_cagul.demo.cagul_fit_settings`), with the variant's depth term, and evaluated by the
demo's suite. Printed: a markdown table, each figure the mean +- the standard deviation over
the seeds, of

* forget keyword accuracy on training and on held-out photos (lower is better);
* retain ratio: retain keyword accuracy over the stage-1 model's (1 is perfect);
* keyword accuracy of visual questions on the forget people's photos (it must stay);
* MIA AUC: min-k% membership inference, forget vs unseen people (0.5: cannot tell; gold's is
  the target);
* forget truth ratio (FIUBench's score; gold's is the target) and forget quality (the KS-test
  p-value against gold's truth ratios; higher is better);
* the gate on held-out photos (`discriminator_metrics`): its recall of the photos that leak
  (the base model answers them) and its false-positive rates on retain photos and strangers;
  how many strangers' photos the base model takes for a forget person (`mistaken_photos`), the
  share of those the gate flags, and its false-positive rate on the other strangers;
* the fit's wall time (the gate's fit included).

The gate's design and fit are the demo's unless ``--gate``, ``--gate-fit``,
``--gate-target-fpr`` or ``--gate-every-question`` say otherwise; a gate fitted apart gets
`gate_negatives` (the retain photos and the strangers of the ``negatives`` split). A variant
is ``off`` (no depth term) or ``LOSS:WEIGHT`` (``npo:0.3``, ``unlikelihood:1``); with
``--gate-kept-as-negatives off on``, each variant is fitted twice, with the forget photos'
visual questions as the gate's positives and as its negatives::

    python bench/ablate_depth.py                       # seeds 0 1 2, the demo's settings
    python bench/ablate_depth.py --variants off npo:1 --gate-fit joint --gate visual_tokens
    python bench/ablate_depth.py --quick --seeds 0 --stage1-steps 20 --cagul-steps 10
    python bench/ablate_depth.py --variants npo:1 --no-gold --gate-kept-as-negatives off on
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ablation import cached_teach, cell, report
from datasets import concatenate_datasets

from hf_cagul import CagulConfig
from hf_cagul.compare import fit_cagul_adapter
from hf_cagul.data import gate_negatives
from hf_cagul.demo import DemoConfig, cagul_fit_settings, gate_photos
from hf_cagul.evaluation.suite import discriminator_metrics, evaluate_model
from hf_cagul.trainer.cagul_config import DEPTH_LOSSES

DEFAULT_VARIANTS = ("off", "npo:0.1", "npo:0.3", "npo:1", "unlikelihood:1")
COLUMNS = (
    ("forget kw (train)", "forget_keyword"),
    ("forget kw (held-out)", "forget_heldout_keyword"),
    ("retain ratio", "retain_ratio"),
    ("visual kw (forget photos)", "forget_visual_keyword"),
    ("MIA AUC", "mia_auc"),
    ("forget truth ratio", "forget_truth_ratio"),
    ("forget quality", "forget_quality"),
    ("gate leak recall", "gate_leak_recall"),
    ("gate FPR retain", "gate_fpr"),
    ("gate FPR strangers", "gate_stranger_fpr"),
    ("strangers taken for forget people", "gate_mistaken_strangers"),
    ("gate flags them", "gate_mistaken_recall"),
    ("gate FPR other strangers", "gate_stranger_fpr_unmistaken"),
    ("fit s", "fit_seconds"),
)


def parse_variant(variant: str) -> tuple[str, float]:
    """``"off"`` -> ``("npo", 0.0)``; ``"LOSS:WEIGHT"`` -> ``(LOSS, WEIGHT)``."""
    if variant == "off":
        return "npo", 0.0
    loss, _, weight = variant.partition(":")
    if loss not in DEPTH_LOSSES or not weight:
        raise SystemExit(
            f"Variant {variant!r}: write 'off' or LOSS:WEIGHT with LOSS one of "
            f"{', '.join(DEPTH_LOSSES)} (e.g. npo:0.3)."
        )
    return loss, float(weight)


def run_seed(
    config: DemoConfig,
    variants: Sequence[str],
    cache: Path,
    with_gold: bool,
    kept_as_negatives: Sequence[bool] = (),
) -> dict[str, dict[str, Any]]:
    """Every variant's metrics (and ``stage 1``'s, ``gold``'s) on one seed's benchmark; each
    variant fitted once per value of ``kept_as_negatives`` (none given: the config's)."""
    splits = config.benchmark()
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    rows = config.max_eval_rows
    results: dict[str, dict[str, Any]] = {}
    reference = None
    if with_gold:
        gold, gold_processor = cached_teach(config, cache, gold=True)
        results["gold"] = evaluate_model(gold, gold_processor, splits, max_rows=rows)
        reference = results["gold"].get("forget_truth_ratios")
    vlm, processor = cached_teach(config, cache, gold=False)
    results["stage 1"] = evaluate_model(vlm, processor, splits, reference, max_rows=rows)
    measured = gate_photos(vlm, processor, splits)
    kept_values = list(kept_as_negatives) or [config.gate_kept_as_negatives]
    fits = [(variant, kept) for variant in variants for kept in kept_values]
    for variant, kept in fits:
        loss, weight = parse_variant(variant)
        settings = replace(
            cagul_fit_settings(config),
            depth_weight=weight,
            depth_loss=loss,
            gate_kept_as_negatives=kept,
        )
        name = (
            f"{variant}, kept {'negative' if kept else 'positive'}"
            if len(kept_values) > 1
            else variant
        )
        clock = time.perf_counter()
        model = fit_cagul_adapter(vlm, processor, train, settings, gate_negatives(splits))
        seconds = time.perf_counter() - clock
        results[name] = {
            **evaluate_model(model, processor, splits, reference, max_rows=rows),
            **{
                f"gate_{key}": value
                for key, value in discriminator_metrics(model, processor, **measured).items()
            },
            "fit_seconds": seconds,
        }
        vlm = model.unload()
    before = results["stage 1"].get("retain_keyword")
    for values in results.values():
        after = values.get("retain_keyword")
        values["retain_ratio"] = after / before if before and after is not None else None
    return results


def markdown_table(per_seed: Sequence[dict[str, dict[str, Any]]]) -> list[str]:
    """One row per model (stage 1, gold, each variant), one column per metric."""
    header = ["model", *(title for title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in per_seed[0]:
        values = [cell([seed[name].get(key) for seed in per_seed]) for _, key in COLUMNS]
        lines.append("| " + " | ".join([name, *values]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--quick", action="store_true", help="DemoConfig.quick (a smoke test)")
    parser.add_argument("--stage1-steps", type=int, help="override the preset's stage-1 steps")
    parser.add_argument("--cagul-steps", type=int, help="override the preset's CAGUL steps")
    parser.add_argument("--max-eval-rows", type=int, help="override rows per split and kind")
    parser.add_argument("--no-gold", action="store_true", help="skip the retain-only model")
    parser.add_argument("--gate", help="CagulConfig.gate of every fit (default: the demo's)")
    parser.add_argument("--gate-fit", choices=("joint", "apart"), help="default: the demo's")
    parser.add_argument(
        "--gate-target-fpr", type=float, help="calibration target (default: the demo's)"
    )
    parser.add_argument(
        "--gate-every-question",
        choices=("on", "off"),
        help="cache each forget photo with every question (default: the demo's)",
    )
    parser.add_argument(
        "--gate-kept-as-negatives",
        choices=("on", "off"),
        nargs="+",
        default=[],
        help="fit the forget photos' visual questions as negatives; several values: each "
        "variant once per value (default: the demo's)",
    )
    parser.add_argument("--cache", type=Path, default=Path("outputs/stage1"))
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    options = parser.parse_args()
    for variant in options.variants:
        parse_variant(variant)  # a typo fails here, before any teaching
    if len(set(options.variants)) != len(options.variants):
        raise SystemExit(f"--variants {' '.join(options.variants)}: name each variant once.")
    overrides = {
        name: value
        for name, value in (
            ("stage1_steps", options.stage1_steps),
            ("cagul_steps", options.cagul_steps),
            ("max_eval_rows", options.max_eval_rows),
        )
        if value is not None
    }
    if options.gate_fit is not None:
        overrides["gate_fit"] = options.gate_fit
    if options.gate_target_fpr is not None:
        overrides["gate_target_fpr"] = options.gate_target_fpr
    if options.gate_every_question is not None:
        overrides["gate_every_question"] = options.gate_every_question == "on"
    kept = [value == "on" for value in options.gate_kept_as_negatives]
    if len(set(kept)) != len(kept):
        raise SystemExit("--gate-kept-as-negatives: name each value once.")
    adapter = {} if options.gate is None else {"adapter": CagulConfig(gate=options.gate)}
    started = time.perf_counter()
    per_seed = []
    for seed in options.seeds:
        preset = DemoConfig.quick if options.quick else DemoConfig
        config = preset(seed=seed, **overrides, **adapter)
        per_seed.append(
            run_seed(config, options.variants, options.cache, not options.no_gold, kept)
        )
    seeds = ", ".join(map(str, options.seeds))
    title = (
        f"Depth-term ablation, seeds {seeds} ({'quick' if options.quick else 'demo'} settings"
        f"{', ' + json.dumps(overrides) if overrides else ''}, gate {config.adapter.gate}, "
        f"gate fit {config.gate_fit}): mean ± std over the seeds."
    )
    report(title, markdown_table(per_seed), started, options.output)


if __name__ == "__main__":
    main()

"""The ``hf-cagul`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_cagul import persistence
from hf_cagul.version import __version__


def _inspect(args: argparse.Namespace) -> int:
    """Print an adapter's configuration and size without loading any VLM."""
    config_path, weights_path = persistence.resolve_adapter_files(
        args.adapter, revision=args.revision, local_files_only=args.local_files_only
    )
    config = persistence.load_config(config_path)
    weights = persistence.load_weights(weights_path)
    parameters = sum(tensor.numel() for tensor in weights.values())
    if args.json:
        print(json.dumps({"config": config.to_dict(), "parameters": parameters}, indent=2))
        return 0
    print(f"CAGUL adapter {args.adapter}")
    print(f"  base model      : {config.base_model_name_or_path}")
    print(f"  family          : {config.family} (hidden size {config.hidden_size})")
    print(f"  attention layer : {config.resolved_attention_layer} of {config.num_hidden_layers}")
    rewritten = config.num_tokens or f"{config.token_ratio:.0%}"
    print(f"  rewritten tokens: {rewritten} per flagged image (query: {config.query_tokens})")
    print(f"  gate threshold  : {config.gate_threshold}")
    print(f"  parameters      : {parameters:,d} in {len(weights)} tensors")
    print(f"  written by      : hf_cagul {config.cagul_version}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Run the embedded benchmark end to end and write the report."""
    from transformers.utils import logging as transformers_logging

    from hf_cagul.demo import DemoConfig, print_summary, run_demo

    transformers_logging.set_verbosity_error()  # the demo's own progress bars say enough

    overrides = {
        key: value
        for key, value in {
            "output_dir": args.output_dir,
            "people": args.people,
            "forget_fraction": args.forget_fraction,
            "stage1_steps": args.stage1_steps,
            "cagul_steps": args.cagul_steps,
            "seed": args.seed,
        }.items()
        if value is not None
    }
    overrides["gold"] = not args.no_gold
    overrides["ablation"] = args.ablation
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    if args.requests < 1:
        raise ValueError(f"--requests {args.requests}: give at least one forget request.")
    if args.requests > 1:
        from hf_cagul.continual import print_requests_table, run_continual

        if args.ablation:
            raise ValueError("--ablation runs with one request only; drop it or --requests.")
        continual_metrics, _ = run_continual(config, args.requests)
        print_requests_table(continual_metrics, Path(config.output_dir))
        return 0
    metrics = run_demo(config)
    print_summary(metrics, Path(config.output_dir))
    return 0


def load_processor(path: str) -> Any:
    """A processor from ``path``: `AutoProcessor`, or the tiny processors of `hf_cagul.tiny`."""
    from transformers import AutoProcessor

    from hf_cagul import tiny

    config_file = Path(path) / "processor_config.json"
    name = (
        json.loads(config_file.read_text()).get("processor_class")
        if config_file.is_file()
        else None
    )
    tiny_class = getattr(tiny, name, None) if name else None
    if tiny_class is not None:
        return tiny_class.from_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate a VLM, with or without an adapter, on a benchmark saved with datasets."""
    from datasets import load_from_disk
    from transformers import AutoModelForImageTextToText

    from hf_cagul.evaluation.report import write_report
    from hf_cagul.evaluation.suite import evaluate_model
    from hf_cagul.model import CagulModel

    splits = load_from_disk(args.dataset)
    if not hasattr(splits, "keys") or "forget" not in splits:
        raise ValueError(
            f"{args.dataset} must be a DatasetDict (datasets.save_to_disk) with at least a "
            "'forget' split; 'retain', 'forget_heldout' and 'unseen' are used when present."
        )
    vlm = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = load_processor(args.processor or args.model)
    model: Any = vlm
    if args.adapter:
        model = CagulModel.from_pretrained(vlm, args.adapter, revision=args.revision)
    results = evaluate_model(model, processor, splits, max_rows=args.max_rows)
    results.pop("forget_truth_ratios", None)
    name = "cagul" if args.adapter else "base"
    if args.output_dir:
        write_report(
            args.output_dir, {"title": f"Evaluation of {args.model}", "results": {name: results}}
        )
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-cagul``."""
    parser = argparse.ArgumentParser(
        prog="hf-cagul", description="CAGUL unlearning adapters for vision-language models."
    )
    parser.add_argument("--version", action="version", version=f"hf_cagul {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="show an adapter's configuration (local directory or Hub repo id)"
    )
    inspect.add_argument("adapter", help="adapter directory or Hub repo id")
    inspect.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    inspect.add_argument(
        "--local-files-only", action="store_true", help="only use the local Hub cache"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)

    demo = commands.add_parser(
        "demo", help="teach a tiny VLM fictitious people, fit CAGUL, evaluate, write a report"
    )
    demo.add_argument("--output-dir", type=Path, default=None, help="default: cagul-demo")
    demo.add_argument("--quick", action="store_true", help="fewer people and steps (~2 min)")
    demo.add_argument("--people", type=int, default=None, help="fictitious people taught")
    demo.add_argument("--forget-fraction", type=float, default=None)
    demo.add_argument("--stage1-steps", type=int, default=None)
    demo.add_argument("--cagul-steps", type=int, default=None)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--no-gold", action="store_true", help="skip the retain-only model")
    demo.add_argument(
        "--ablation", action="store_true", help="also fit random / highest-attention selection"
    )
    demo.add_argument(
        "--requests",
        type=int,
        default=1,
        help="successive forget requests, one adapter each, composed (default 1: one adapter)",
    )
    demo.set_defaults(handler=_demo)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a VLM (and an adapter) on a benchmark in the data contract"
    )
    evaluate.add_argument("--model", required=True, help="VLM directory or Hub id")
    evaluate.add_argument("--adapter", default=None, help="adapter directory or Hub id")
    evaluate.add_argument("--revision", default=None, help="adapter revision on the Hub")
    evaluate.add_argument("--processor", default=None, help="processor path (default: --model)")
    evaluate.add_argument("--dataset", required=True, help="a DatasetDict saved with save_to_disk")
    evaluate.add_argument("--max-rows", type=int, default=200, help="rows per split and kind")
    evaluate.add_argument("--output-dir", default=None, help="also write report.md and plots")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-cagul``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (OSError, ValueError) as err:
        print(f"hf-cagul: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``hf-cagul`` command: ``inspect``, ``demo``, ``fit``, ``evaluate``, ``push``.

Subcommands that run on a model and a benchmark share their options and loaders, so a new one
(``compare``, say) is built from the same parts: `add_config_argument` (``--config run.yaml``,
read by `hf_cagul.runconfig.parse_args`), `add_model_arguments`, `add_benchmark_arguments`,
then `load_vlm` and `load_splits` in its handler, and `hf_cagul.runconfig.require` for the
options a run file may set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_cagul import persistence
from hf_cagul.runconfig import add_config_argument, parse_args, require
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
    """Run the embedded benchmark end to end and write the report (``compare``: with baselines)."""
    from transformers.utils import logging as transformers_logging

    from hf_cagul.compare import FitSettings
    from hf_cagul.demo import DemoConfig, print_summary, run_demo

    transformers_logging.set_verbosity_error()  # the demo's own progress bars say enough

    overrides = {
        key: value
        for key, value in {
            "output_dir": args.output_dir or args.default_dir,
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
    overrides["compare"] = args.compare
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    requests = getattr(args, "requests", 1)  # `compare` has no --requests
    if requests < 1:
        raise ValueError(f"--requests {requests}: give at least one forget request.")
    if requests > 1:
        from hf_cagul.continual import print_requests_table, run_continual

        if args.ablation or args.compare:
            raise ValueError(
                "--ablation and --compare run with one request only; drop them or --requests."
            )
        continual_metrics, _ = run_continual(config, requests)
        print_requests_table(continual_metrics, Path(config.output_dir))
        return 0
    if args.compare:
        # As the demo's own fits: batch 16, and the CPU for every method's fit time.
        demo_fit = FitSettings(steps=config.cagul_steps, seed=config.seed, use_cpu=True)
        config.baselines = _baseline_settings(args, demo_fit)
    metrics = run_demo(config)
    print_summary(metrics, Path(config.output_dir))
    return 0


def _baseline_settings(args: argparse.Namespace, fit: Any) -> Any:
    """The baselines' settings from the command line, with the CAGUL fit's budget (``fit``):
    its batch size, seed and device, and its steps unless ``--baseline-steps`` says otherwise."""
    from hf_cagul.compare import BaselineSettings

    return BaselineSettings(
        methods=tuple(args.methods),
        steps=args.baseline_steps or fit.steps,
        batch_size=fit.batch_size,
        learning_rate=args.baseline_learning_rate,
        seed=fit.seed,
        use_cpu=fit.use_cpu,
        lora_r=args.lora_r,
        full=args.full,
    )


def _compare(args: argparse.Namespace) -> int:
    """``hf-cagul compare``: on ``--model`` or ``--tiny`` and ``--benchmark``, else the demo."""
    if not (args.model or args.tiny or args.benchmark):
        return _demo(args)
    from hf_cagul.compare import CagulFitSettings, run_comparison

    splits = load_splits(args)
    vlm, processor = load_vlm(args.model, args.processor, args.tiny, args.dtype, args.device)
    seed = args.seed if args.seed is not None else 0
    cagul = CagulFitSettings(
        steps=args.cagul_steps or 500,
        batch_size=args.batch_size,
        learning_rate=args.cagul_learning_rate,
        seed=seed,
    )
    baselines = _baseline_settings(args, cagul)
    output_dir = args.output_dir or args.default_dir
    name = "the tiny VLM" if args.tiny else args.model
    run_comparison(
        vlm,
        processor,
        splits,
        output_dir,
        cagul,
        baselines,
        args.max_rows,
        title=f"CAGUL against fine-tuning unlearning: {name} on {args.benchmark or 'synthetic'}",
    )
    print(f"Comparison written to {output_dir}/comparison.md (and report.md, comparison.csv)")
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


def load_vlm(
    model: str | None,
    processor: str | None = None,
    tiny: bool = False,
    dtype: str = "auto",
    device: str = "auto",
) -> tuple[Any, Any]:
    """The VLM and processor a run works on: ``hf_cagul.tiny``'s LLaVA, or ``model``.

    Args:
        model: VLM directory or Hub id (ignored with ``tiny``).
        processor: Processor directory or Hub id (default: ``model``).
        tiny: Build the tiny offline LLaVA of `hf_cagul.tiny` (seed 0: the same weights every
            time, so adapters fitted on it can be evaluated and served later).
        dtype: ``dtype`` for `from_pretrained` (``"auto"``: the checkpoint's).
        device: Where the model goes: ``"auto"`` (the first GPU when there is one, else the
            CPU), a torch device such as ``"cuda:1"``, or ``"map"`` (``device_map="auto"``:
            spread over every GPU, for a model that does not fit on one).

    Under DeepSpeed ZeRO-3 (a live `CagulTrainingConfig` from an ``accelerate launch`` with a
    ZeRO-3 config) the VLM is partitioned while it loads and DeepSpeed places the partitions:
    ``device`` is not applied, and ``"map"`` is refused.
    """
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    partitioned = is_deepspeed_zero3_enabled()
    if device == "map" and (tiny or partitioned):
        raise ValueError(
            "--device map spreads a real model over GPUs by itself: not with --tiny, nor under "
            "DeepSpeed ZeRO-3, which partitions the model over the processes (drop --device)."
        )
    vlm: Any
    if tiny:
        from hf_cagul.tiny import tiny_vlm

        vlm, loaded_processor = tiny_vlm("llava", seed=0)
    elif model is None:
        raise ValueError("--model required (or --tiny for the tiny offline VLM).")
    else:
        from transformers import AutoModelForImageTextToText

        device_map = {"device_map": "auto"} if device == "map" else {}
        vlm = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, **device_map)
        loaded_processor = load_processor(processor or model)
    if device != "map" and not partitioned:
        vlm = vlm.to(torch.device(resolve_device(device)))
    return vlm.eval(), loaded_processor


def resolve_device(device: str) -> str:
    """The torch device ``--device`` names: ``"auto"`` is the first GPU if any, else the CPU."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_splits(args: argparse.Namespace) -> Any:
    """The benchmark of ``--benchmark`` / ``--data`` / ``--forget-split`` (or ``--dataset``)."""
    from hf_cagul.data.benchmarks import load_benchmark

    dataset = getattr(args, "dataset", None)
    if args.benchmark is None and dataset is not None:
        return load_benchmark("synthetic", dataset)
    require(args, "benchmark")
    return load_benchmark(args.benchmark, args.data, args.forget_split, args.data_revision)


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate a VLM, with or without an adapter, on a benchmark."""
    from hf_cagul.evaluation.report import write_report
    from hf_cagul.evaluation.suite import evaluate_model
    from hf_cagul.model import CagulModel

    if args.benchmark is None and args.dataset is None:
        raise ValueError(
            "Pass --benchmark (with --data) or --dataset (a DatasetDict saved with save_to_disk)."
        )
    splits = load_splits(args)
    vlm, processor = load_vlm(args.model, args.processor, args.tiny, args.dtype, args.device)
    model: Any = vlm
    if args.adapter:
        model = CagulModel.from_pretrained(vlm, args.adapter, revision=args.revision)
    results = evaluate_model(model, processor, splits, max_rows=args.max_rows)
    results.pop("forget_truth_ratios", None)
    name = "cagul" if args.adapter else "base"
    if args.output_dir:
        title = f"Evaluation of {'the tiny VLM' if args.tiny else args.model}"
        write_report(args.output_dir, {"title": title, "results": {name: results}})
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def _add_demo_arguments(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """Options of ``demo`` and ``compare``: the benchmark, the fits, and the baselines."""
    from hf_cagul.baselines import BASELINES

    parser.add_argument("--output-dir", type=Path, default=None, help=f"default: {default_dir}")
    parser.add_argument("--quick", action="store_true", help="fewer people and steps (~2 min)")
    parser.add_argument("--people", type=int, default=None, help="fictitious people taught")
    parser.add_argument("--forget-fraction", type=float, default=None)
    parser.add_argument("--stage1-steps", type=int, default=None)
    parser.add_argument("--cagul-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-gold", action="store_true", help="skip the retain-only model")
    parser.add_argument(
        "--ablation", action="store_true", help="also fit random / highest-attention selection"
    )
    baselines = parser.add_argument_group("fine-tuning baselines (with --compare)")
    baselines.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(BASELINES),
        default=list(BASELINES),
        help="baselines to fit (default: all)",
    )
    baselines.add_argument(
        "--baseline-steps", type=int, default=None, help="default: the CAGUL fit's steps"
    )
    baselines.add_argument("--baseline-learning-rate", type=float, default=1e-3)
    baselines.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    baselines.add_argument(
        "--full", action="store_true", help="fine-tune the language model's full weights"
    )
    parser.set_defaults(default_dir=Path(default_dir))


def _fit(args: argparse.Namespace) -> int:
    """Fit a CAGUL adapter on a benchmark with `CagulTrainer`; resumable from checkpoints."""
    from transformers.trainer_utils import get_last_checkpoint

    from hf_cagul.config import CagulConfig
    from hf_cagul.data.benchmarks import training_set
    from hf_cagul.model import get_cagul_model
    from hf_cagul.trainer import CagulTrainer, CagulTrainingConfig

    require(args, "output_dir")
    output_dir = Path(args.output_dir)
    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if checkpoint is not None and not args.resume:
        raise ValueError(
            f"{output_dir} already holds {Path(checkpoint).name}: pass --resume to continue "
            "that run, or choose another --output-dir."
        )
    train = training_set(load_splits(args))
    # Passed only when asked: TrainingArguments warns about the name whenever it is given.
    checkpointing: dict[str, Any] = (
        {"gradient_checkpointing": True} if args.gradient_checkpointing else {}
    )
    # The training config before the VLM: under `accelerate launch` with a DeepSpeed ZeRO-3
    # config, from_pretrained partitions the VLM as it loads only once the config exists, and
    # under torchrun the config picks each process's GPU, which "cuda" then means.
    training_config = CagulTrainingConfig(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        augment_images=args.augment_images,
        **checkpointing,
        bf16=args.bf16,
        seed=args.seed,
        # On the CPU, Trainer runs several processes (torchrun) as DDP over gloo only when
        # told it is on the CPU.
        use_cpu=resolve_device(args.device) == "cpu",
        report_to=args.report_to,
        disable_tqdm=False,
    )
    vlm, processor = load_vlm(args.model, args.processor, args.tiny, args.dtype, args.device)
    model = get_cagul_model(
        vlm,
        CagulConfig(token_ratio=args.token_ratio, attention_layer=args.attention_layer),
    )
    trainer = CagulTrainer(
        model=model,
        args=training_config,
        train_dataset=train,
        processing_class=processor,
    )
    if checkpoint is not None:
        print(f"Resuming from {checkpoint}")
    elif args.resume:
        print(f"No checkpoint in {output_dir}: starting from scratch.")
    trainer.train(resume_from_checkpoint=checkpoint)
    # On every process: under ZeRO-3 / FSDP the Trainer gathers the adapter first; the main
    # process alone writes it.
    adapter = output_dir / "adapter"
    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        steps = trainer.state.global_step
        print(f"Adapter written to {adapter} ({len(train)} training rows, {steps} steps)")
    # Under torchrun every process leaves together, with its process group destroyed: exiting
    # with gloo's threads alive can abort a process ("terminate called without an active
    # exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


def _push(args: argparse.Namespace) -> int:
    """Upload a saved adapter directory to the Hub."""
    directory = Path(args.adapter)
    if not directory.is_dir():
        raise ValueError(
            f"{directory} is not a local adapter directory (save_pretrained writes one)."
        )
    persistence.resolve_adapter_files(directory)  # refuses anything but a CAGUL adapter
    url = persistence.push_adapter(
        directory, args.repo_id, args.private, args.token, args.commit_message, args.revision
    )
    print(url)
    return 0


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--model``, ``--processor``, ``--tiny``, ``--dtype``, ``--device`` (for `load_vlm`)."""
    parser.add_argument("--model", default=None, help="VLM directory or Hub id")
    parser.add_argument("--processor", default=None, help="processor path (default: --model)")
    parser.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="use hf_cagul.tiny's offline LLaVA instead of --model (CI, smoke tests)",
    )
    parser.add_argument("--dtype", default="auto", help="dtype to load the VLM in (bfloat16...)")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (GPU if any), a torch device (cuda:1), or map (device_map='auto')",
    )


def add_benchmark_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--benchmark``, ``--data``, ``--forget-split``, ``--data-revision``."""
    from hf_cagul.data.benchmarks import BENCHMARK_NAMES

    parser.add_argument("--benchmark", default=None, choices=BENCHMARK_NAMES)
    parser.add_argument(
        "--data",
        default=None,
        help="local copy or Hub dataset id (synthetic: a save_to_disk DatasetDict, or none)",
    )
    parser.add_argument(
        "--forget-split",
        default=None,
        help="e.g. forget10 (FIUBench, CLEAR), forget_10 (MLLMU-Bench); default: 10%%",
    )
    parser.add_argument("--data-revision", default=None, help="Hub revision of --data")


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
    _add_demo_arguments(demo, default_dir="cagul-demo")
    demo.add_argument(
        "--compare", action="store_true", help="also fit and evaluate the fine-tuning baselines"
    )
    demo.add_argument(
        "--requests",
        type=int,
        default=1,
        help="successive forget requests, one adapter each, composed (default 1: one adapter)",
    )
    demo.set_defaults(handler=_demo)

    compare = commands.add_parser(
        "compare",
        help="the demo's stage 1 once, then CAGUL and every fine-tuning baseline on the same "
        "splits, seed and evaluation: one table (markdown, CSV) and a leakage-vs-utility plot",
    )
    _add_demo_arguments(compare, default_dir="cagul-compare")
    own = compare.add_argument_group(
        "your own model and benchmark (instead of the demo's tiny VLM and synthetic people)"
    )
    add_config_argument(compare)
    add_model_arguments(own)
    add_benchmark_arguments(own)
    own.add_argument("--batch-size", type=int, default=8, help="rows per step, every method")
    own.add_argument("--cagul-learning-rate", type=float, default=1e-3)
    own.add_argument("--max-rows", type=int, default=200, help="evaluated rows per split and kind")
    compare.set_defaults(handler=_compare, compare=True)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a VLM (and an adapter) on a benchmark in the data contract"
    )
    add_config_argument(evaluate)
    add_model_arguments(evaluate)
    evaluate.add_argument("--adapter", default=None, help="adapter directory or Hub id")
    evaluate.add_argument("--revision", default=None, help="adapter revision on the Hub")
    add_benchmark_arguments(evaluate)
    evaluate.add_argument("--dataset", default=None, help="a DatasetDict saved with save_to_disk")
    evaluate.add_argument("--max-rows", type=int, default=200, help="rows per split and kind")
    evaluate.add_argument("--output-dir", default=None, help="also write report.md and plots")
    evaluate.set_defaults(handler=_evaluate)

    fit = commands.add_parser(
        "fit", help="fit a CAGUL adapter on a benchmark (CagulTrainer; resumable)"
    )
    add_config_argument(fit)
    add_model_arguments(fit)
    add_benchmark_arguments(fit)
    fit.add_argument("--output-dir", default=None, help="checkpoints and the final adapter/")
    fit.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="continue from the last checkpoint in --output-dir",
    )
    fit.add_argument("--max-steps", type=int, default=500)
    fit.add_argument("--batch-size", type=int, default=8, help="per device")
    fit.add_argument("--gradient-accumulation-steps", type=int, default=1)
    fit.add_argument("--learning-rate", type=float, default=1e-3)
    fit.add_argument("--token-ratio", type=float, default=0.5, help="visual tokens rewritten")
    fit.add_argument("--attention-layer", type=int, default=None, help="default: CagulConfig's")
    fit.add_argument("--save-steps", type=int, default=100, help="checkpoint every N steps")
    fit.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    fit.add_argument("--logging-steps", type=int, default=10)
    fit.add_argument("--augment-images", action=argparse.BooleanOptionalAction, default=True)
    fit.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False
    )
    fit.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--report-to", nargs="*", default=[], help="Trainer loggers (tensorboard, wandb...)"
    )
    fit.set_defaults(handler=_fit)

    push = commands.add_parser("push", help="upload a saved adapter directory to the Hub")
    push.add_argument("adapter", help="adapter directory (save_pretrained / hf-cagul fit)")
    push.add_argument("repo_id", help="Hub repo id, e.g. org/forget-adapter")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.add_argument("--commit-message", default="Upload CAGUL adapter")
    push.set_defaults(handler=_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-cagul``; returns the exit status."""
    try:
        args = parse_args(build_parser(), argv)
        return int(args.handler(args))
    except (OSError, ValueError) as err:
        print(f"hf-cagul: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

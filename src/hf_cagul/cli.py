"""The ``hf-cagul`` command: ``inspect``, ``demo``, ``compare``, ``fit``, ``evaluate``, ``push``.

The options of ``demo``, ``compare``, ``fit`` and ``evaluate`` are the fields of the
dataclasses they run with, parsed by `hf_cagul.runconfig.CommandParser` (a
`transformers.HfArgumentParser`), with each field's help: ``fit`` takes every field of
`CagulConfig` that is not filled in at injection and every field of `CagulTrainingConfig`
(`TrainingArguments`); ``demo`` and ``compare`` those of `DemoConfig`, `CagulConfig` and
`BaselineSettings`. The model and benchmark options several subcommands share are
`ModelArguments` and `BenchmarkArguments`. Every such subcommand reads ``--config run.yaml``
(`hf_cagul.runconfig.parse_args`); a handler builds its dataclasses with
`hf_cagul.runconfig.build`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hf_cagul import persistence, vetting
from hf_cagul.app.arguments import AppArguments
from hf_cagul.compare import BaselineSettings, CagulFitSettings, FitSettings
from hf_cagul.config import CagulConfig
from hf_cagul.data.benchmarks import BENCHMARK_NAMES
from hf_cagul.demo import DEMO_GATE, QUICK_PRESET, DemoConfig
from hf_cagul.runconfig import CommandParser, add_config_argument, build, parse_args, require
from hf_cagul.trainer import CagulTrainingConfig
from hf_cagul.version import __version__

FIT_DEFAULTS: dict[str, Any] = {
    "output_dir": None,  # required: checkpoints and the adapter go there
    "max_steps": 500,
    "per_device_train_batch_size": 8,
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 10,
    "augment_images": True,
    "seed": 0,
    "report_to": "none",
    "disable_tqdm": False,
}
"""``hf-cagul fit``'s defaults where a checkpointed run needs its own (``report_to`` too, so
that no transformers release turns loggers on)."""


@dataclass
class ModelArguments:
    """The VLM a subcommand runs on (`load_vlm`)."""

    model: str | None = field(default=None, metadata={"help": "VLM directory or Hub id."})
    processor: str | None = field(
        default=None, metadata={"help": "Processor directory or Hub id (default: --model)."}
    )
    tiny: bool = field(
        default=False,
        metadata={
            "help": "Use hf_cagul.tiny's offline LLaVA instead of --model (CI, smoke tests)."
        },
    )
    dtype: str = field(
        default="auto", metadata={"help": "dtype to load the VLM in (bfloat16...; auto: its own)."}
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (GPU if any), a torch device (cuda:1), or map (device_map='auto')."
        },
    )

    def load(self) -> tuple[Any, Any]:
        """The VLM and its processor (`load_vlm`)."""
        return load_vlm(self.model, self.processor, self.tiny, self.dtype, self.device)

    def name(self) -> str:
        """How reports name the model."""
        return "the tiny VLM" if self.tiny else str(self.model)


@dataclass
class BenchmarkArguments:
    """The benchmark a subcommand runs on (`hf_cagul.data.benchmarks.load_benchmark`)."""

    benchmark: str | None = field(
        default=None, metadata={"help": "Benchmark to load.", "choices": BENCHMARK_NAMES}
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Local copy or Hub dataset id (synthetic: a save_to_disk DatasetDict, or none)."
        },
    )
    forget_split: str | None = field(
        default=None,
        metadata={
            "help": "e.g. forget10 (FIUBench, CLEAR), forget_10 (MLLMU-Bench); default: 10%%."
        },
    )
    data_revision: str | None = field(default=None, metadata={"help": "Hub revision of --data."})

    def load(self, dataset: str | None = None) -> Any:
        """The benchmark's splits, or the ``dataset`` saved with ``save_to_disk`` when no
        ``benchmark`` is named."""
        from hf_cagul.data.benchmarks import load_benchmark

        if self.benchmark is None:
            if dataset is not None:
                return load_benchmark("synthetic", dataset)
            require(self, "benchmark")
        return load_benchmark(str(self.benchmark), self.data, self.forget_split, self.data_revision)


@dataclass
class FitArguments:
    """``hf-cagul fit``'s own option."""

    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in --output-dir."}
    )


@dataclass
class EvaluateArguments:
    """``hf-cagul evaluate``'s own options."""

    adapter: str | None = field(default=None, metadata={"help": "Adapter directory or Hub id."})
    revision: str | None = field(default=None, metadata={"help": "Adapter revision on the Hub."})
    dataset: str | None = field(
        default=None, metadata={"help": "A DatasetDict saved with save_to_disk."}
    )
    max_rows: int = field(default=200, metadata={"help": "Evaluated rows per split and kind."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Also write report.md and plots there."}
    )
    attacks: bool = field(
        default=False,
        metadata={
            "help": "Also attack the adapter's gate (hf_cagul.evaluation.attacks) on the "
            "held-out photos of forget people (the forget_heldout split, at most --max-rows "
            "photos): white-box PGD at 1, 2, 4 and 8 / 255 and a black-box attacker. Needs "
            "--adapter."
        },
    )
    attack_queries: int = field(
        default=200, metadata={"help": "The black-box attacker's queries per photo."}
    )
    attack_steps: int = field(default=10, metadata={"help": "The white-box attacker's steps."})
    attack_seed: int = field(default=0, metadata={"help": "Seed of both attacks."})


@dataclass
class PresetArguments:
    """``--quick`` and ``--verbose`` of ``demo`` and ``compare``."""

    quick: bool = field(
        default=False,
        metadata={"help": "The smoke-test preset (DemoConfig.quick): fewer people and steps."},
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Also show the progress bars and warnings of transformers, datasets and "
            "DeepSpeed (by default the run prints only its own)."
        },
    )


def _quiet_libraries() -> None:
    """Silence the libraries' own progress bars and start-up warnings for a CPU run."""
    import os

    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # DeepSpeed (installed with the dev extra) warns at import that it found no GPU and falls
    # back to the CPU; the demo fits on the CPU by design, so say so before it looks.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@dataclass
class RequestsArguments:
    """``--requests`` of ``demo``."""

    requests: int = field(
        default=1,
        metadata={
            "help": "Successive forget requests, one adapter each, composed (1: one adapter)."
        },
    )


@dataclass
class ComparisonArguments:
    """``hf-cagul compare``'s options on your own model and benchmark."""

    batch_size: int = field(
        default=8, metadata={"help": "Rows per step of every method (your own model)."}
    )
    max_rows: int = field(
        default=200, metadata={"help": "Evaluated rows per split and kind (your own model)."}
    )


def _inspect(args: argparse.Namespace) -> int:
    """Print an adapter's configuration and size without loading any VLM nor any tensor (the
    weights file is vetted and measured from its header, `hf_cagul.vetting`)."""
    config_path, weights_path = persistence.resolve_adapter_files(
        args.adapter, revision=args.revision, local_files_only=args.local_files_only
    )
    config = persistence.load_config(config_path)
    weights = vetting.check_weights_file(config, weights_path)
    parameters = sum(math.prod(entry.shape) for entry in weights.values())
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


_OWN_MODEL_FIT = {"cagul_steps": "steps", "cagul_learning_rate": "learning_rate"}
"""``compare`` options (`DemoConfig` fields) that default to the demo's on the demo, and to
`FitSettings`' on your own model: those `CagulFitSettings` fields they set there."""


def _demo_config(args: argparse.Namespace) -> DemoConfig:
    """The `DemoConfig` of ``demo`` / ``compare``, with its adapter and baselines."""
    demo_defaults = {
        item.name: item.default
        for item in fields(DemoConfig)
        if item.name in _OWN_MODEL_FIT and getattr(args, item.name) is None
    }
    return build(
        args,
        DemoConfig,
        adapter=build(args, CagulConfig),
        baselines=build(args, BaselineSettings),
        **demo_defaults,
    )


def _demo(args: argparse.Namespace) -> int:
    """Run the embedded benchmark end to end and write the report (``compare``: with baselines)."""
    from hf_cagul.demo import print_summary, run_demo

    if not args.verbose:
        _quiet_libraries()
    config = _demo_config(args)
    requests = getattr(args, "requests", 1)  # `compare` has no --requests
    if requests < 1:
        raise ValueError(f"--requests {requests}: give at least one forget request.")
    if requests > 1:
        from hf_cagul.continual import print_requests_table, run_continual

        if config.ablation or config.compare:
            raise ValueError(
                "--ablation and --compare run with one request only; drop them or --requests."
            )
        continual_metrics, _ = run_continual(config, requests)
        print_requests_table(continual_metrics, Path(config.output_dir))
        return 0
    metrics = run_demo(config)
    print_summary(metrics, Path(config.output_dir))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """``hf-cagul compare``: on ``--model`` or ``--tiny`` and ``--benchmark``, else the demo."""
    model_arguments = build(args, ModelArguments)
    benchmark = build(args, BenchmarkArguments)
    if not (model_arguments.model or model_arguments.tiny or benchmark.benchmark):
        return _demo(args)
    from hf_cagul.compare import run_comparison

    splits = benchmark.load()
    vlm, processor = model_arguments.load()
    own = build(args, ComparisonArguments)
    budget = {
        fit_name: getattr(args, name)
        for name, fit_name in _OWN_MODEL_FIT.items()
        if getattr(args, name) is not None
    }
    cagul = CagulFitSettings(
        batch_size=own.batch_size, seed=args.seed, adapter=build(args, CagulConfig), **budget
    )
    output_dir = args.output_dir
    run_comparison(
        vlm,
        processor,
        splits,
        output_dir,
        cagul,
        build(args, BaselineSettings),
        own.max_rows,
        title="CAGUL against fine-tuning unlearning: "
        f"{model_arguments.name()} on {benchmark.benchmark or 'synthetic'}",
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


def _app(args: argparse.Namespace) -> int:
    """Serve the adapter inspector (``hf_cagul.app``; needs ``pip install 'hf_cagul[app]'``)."""
    from hf_cagul.app import AppArguments, run_app

    run_app(build(args, AppArguments))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate a VLM, with or without an adapter, on a benchmark."""
    from hf_cagul.evaluation.report import write_report
    from hf_cagul.evaluation.suite import evaluate_model
    from hf_cagul.model import CagulModel

    model_arguments = build(args, ModelArguments)
    options = build(args, EvaluateArguments)
    benchmark = build(args, BenchmarkArguments)
    if benchmark.benchmark is None and options.dataset is None:
        raise ValueError(
            "Pass --benchmark (with --data) or --dataset (a DatasetDict saved with save_to_disk)."
        )
    if options.attacks and not options.adapter:
        raise ValueError("--attacks attacks an adapter's gate: pass --adapter as well.")
    splits = benchmark.load(options.dataset)
    if options.attacks and "forget_heldout" not in splits:
        raise ValueError(
            f"--attacks needs a forget_heldout split (held-out photos of forget people); the "
            f"benchmark has {sorted(splits)}."
        )
    vlm, processor = model_arguments.load()
    model: Any = vlm
    if options.adapter:
        model = CagulModel.from_pretrained(vlm, options.adapter, revision=options.revision)
    results = evaluate_model(model, processor, splits, max_rows=options.max_rows)
    results.pop("forget_truth_ratios", None)
    name = "cagul" if options.adapter else "base"
    report: dict[str, Any] = {"results": {name: results}}
    if options.attacks:
        from hf_cagul.evaluation.attacks import attack_photos, refusals_of, run_attacks

        report["attacks"] = run_attacks(
            model,
            processor,
            attack_photos(splits["forget_heldout"], options.max_rows),
            steps=options.attack_steps,
            queries=options.attack_queries,
            seed=options.attack_seed,
            refusals=refusals_of(splits.get("forget")),
        )
    if options.output_dir:
        title = f"Evaluation of {model_arguments.name()}"
        write_report(options.output_dir, {"title": title, **report})
    print(json.dumps(report if options.attacks else results, indent=2, sort_keys=True))
    return 0


def _fit(args: argparse.Namespace) -> int:
    """Fit a CAGUL adapter on a benchmark with `CagulTrainer`; resumable from checkpoints."""
    from transformers.trainer_utils import get_last_checkpoint

    from hf_cagul.data import gate_negatives
    from hf_cagul.data.benchmarks import training_set
    from hf_cagul.model import get_cagul_model
    from hf_cagul.trainer import CagulTrainer

    model_arguments = build(args, ModelArguments)
    resume = build(args, FitArguments).resume
    require(args, "output_dir")
    output_dir = Path(args.output_dir)
    checkpoint = args.resume_from_checkpoint
    if checkpoint is None and output_dir.is_dir():
        checkpoint = get_last_checkpoint(str(output_dir))
    if checkpoint is not None and not (resume or args.resume_from_checkpoint):
        raise ValueError(
            f"{output_dir} already holds {Path(checkpoint).name}: pass --resume to continue "
            "that run, or choose another --output-dir."
        )
    splits = build(args, BenchmarkArguments).load()
    train = training_set(splits)
    # The training config before the VLM: under `accelerate launch` with a DeepSpeed ZeRO-3
    # config, from_pretrained partitions the VLM as it loads only once the config exists, and
    # under torchrun the config picks each process's GPU, which "cuda" then means. On the CPU,
    # Trainer runs several processes (torchrun) as DDP over gloo only when told it is on the
    # CPU.
    training_config = build(
        args,
        CagulTrainingConfig,
        use_cpu=args.use_cpu or resolve_device(model_arguments.device) == "cpu",
    )
    vlm, processor = model_arguments.load()
    model = get_cagul_model(vlm, build(args, CagulConfig))
    trainer = CagulTrainer(
        model=model,
        args=training_config,
        train_dataset=train,
        processing_class=processor,
        # The retain photos and those of people in neither set, when the benchmark has them.
        gate_negatives=gate_negatives(splits) if training_config.gate_fit == "apart" else None,
    )
    if checkpoint is not None:
        print(f"Resuming from {checkpoint}")
    elif resume:
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


def _command(
    commands: Any, name: str, dataclasses: Sequence[type], help: str, **defaults: Any
) -> CommandParser:
    """Subcommand ``name`` over ``dataclasses`` (`CommandParser`), with ``--config`` and
    ``defaults``."""
    parser: CommandParser = commands.add_parser(name, dataclass_types=dataclasses, help=help)
    add_config_argument(parser)
    parser.set_defaults(**defaults)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-cagul``."""
    parser = argparse.ArgumentParser(
        prog="hf-cagul", description="CAGUL unlearning adapters for vision-language models."
    )
    parser.add_argument("--version", action="version", version=f"hf_cagul {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
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

    demo_options = [PresetArguments, DemoConfig, CagulConfig, BaselineSettings]
    presets = {"quick": QUICK_PRESET}
    _command(
        commands,
        "demo",
        [*demo_options, RequestsArguments],
        "teach a tiny VLM fictitious people, fit CAGUL, evaluate, write a report",
        handler=_demo,
        presets=presets,
        gate=DEMO_GATE,
    )
    compare = _command(
        commands,
        "compare",
        [*demo_options, ModelArguments, BenchmarkArguments, ComparisonArguments],
        "the demo's stage 1 once, then CAGUL and every fine-tuning baseline on the same "
        "splits, seed and evaluation: one table (markdown, CSV) and a leakage-vs-utility plot",
        handler=_compare,
        presets=presets,
        gate=DEMO_GATE,
        output_dir=Path("cagul-compare"),
        compare=True,
        **dict.fromkeys(_OWN_MODEL_FIT),
    )
    demo_fit, own_fit = DemoConfig(), FitSettings()
    compare.description = (
        "On the demo's benchmark, or on --model / --tiny with --benchmark. --cagul-steps and "
        f"--cagul-learning-rate default to the demo's ({demo_fit.cagul_steps}, "
        f"{demo_fit.cagul_learning_rate}) there, to {own_fit.steps} and "
        f"{own_fit.learning_rate} on your own model."
    )
    _command(
        commands,
        "evaluate",
        [ModelArguments, EvaluateArguments, BenchmarkArguments],
        "evaluate a VLM (and an adapter) on a benchmark in the data contract",
        handler=_evaluate,
    )
    fit = _command(
        commands,
        "fit",
        [ModelArguments, BenchmarkArguments, FitArguments, CagulConfig, CagulTrainingConfig],
        "fit a CAGUL adapter on a benchmark (CagulTrainer; resumable)",
        handler=_fit,
        **FIT_DEFAULTS,
    )
    fit.add_argument(
        "--batch-size",
        "--batch_size",
        dest="per_device_train_batch_size",
        type=int,
        default=argparse.SUPPRESS,
        help="Alias of --per-device-train-batch-size.",
    )

    _command(
        commands,
        "app",
        [AppArguments],
        "serve the adapter inspector: a web page that shows the adapter at work on a photo "
        "(--demo-dir cagul-demo, or --model and --adapter)",
        handler=_app,
    )

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

"""The ``hf-cagul`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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

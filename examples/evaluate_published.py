"""Evaluate an adapter someone else published, against the model it was fitted on.

    python examples/evaluate_published.py --adapter org/forget-adapter \
        --benchmark fiubench --data ./FIUBench --forget-split forget10
    python examples/evaluate_published.py --tiny --adapter org/forget-adapter  # offline, CPU

The base model is read from the adapter's config (``base_model_name_or_path``) unless --model
says otherwise. Both models are evaluated with the same suite: the base one inside
``disable_adapter()`` (same weights, adapter off), so the table shows what the adapter changes.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from hf_cagul import CagulModel, persistence
from hf_cagul.data.benchmarks import BENCHMARK_NAMES, load_benchmark
from hf_cagul.evaluation import evaluate_model
from hf_cagul.tiny import tiny_vlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--adapter", required=True, help="Hub repo id or local adapter directory")
parser.add_argument("--model", default=None, help="default: the adapter's base model")
parser.add_argument("--benchmark", default="synthetic", choices=BENCHMARK_NAMES)
parser.add_argument("--data", default=None, help="benchmark copy or Hub dataset id")
parser.add_argument("--forget-split", default=None)
parser.add_argument("--max-rows", type=int, default=100, help="rows per split and kind")
parser.add_argument("--tiny", action="store_true", help="tiny offline LLaVA instead of --model")
args = parser.parse_args()

config_path, _ = persistence.resolve_adapter_files(args.adapter)
config = persistence.load_config(config_path)
print(f"adapter {args.adapter}: {config.family}, fitted on {config.base_model_name_or_path}")
if args.tiny:
    vlm, processor = tiny_vlm("llava")
else:
    name = args.model or config.base_model_name_or_path
    vlm = AutoModelForImageTextToText.from_pretrained(name, dtype=torch.bfloat16, device_map="auto")
    processor = AutoProcessor.from_pretrained(name)

model = CagulModel.from_pretrained(vlm, args.adapter).eval()
splits = load_benchmark(args.benchmark, args.data, args.forget_split)
adapted = evaluate_model(model, processor, splits, max_rows=args.max_rows)
with model.disable_adapter():
    base = evaluate_model(model, processor, splits, max_rows=args.max_rows)

print(f"{'metric':<36}{'base':>10}{'adapter':>10}")
for key in sorted(adapted):
    if isinstance(adapted[key], float):
        print(f"{key:<36}{base.get(key, float('nan')):>10.3f}{adapted[key]:>10.3f}")

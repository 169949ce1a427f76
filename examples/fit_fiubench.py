"""Fit a CAGUL adapter on FIUBench with LLaVA-1.5-7B, on one GPU.

    python examples/fit_fiubench.py --data ./FIUBench --forget-split forget10 --output-dir runs/fiu
    python examples/fit_fiubench.py --tiny --data ./FIUBench   # tiny offline VLM, CPU, seconds

``--data`` is a local FIUBench copy (``full.json`` + ``split.json`` + images, the published
layout) or a Hub dataset id. The VLM should already know the FIUBench faces (FIUBench's stage 1:
fine-tune it on the full set first); CAGUL then makes it forget the ``forget10`` faces without
touching its weights. Rerun with the same ``--output-dir`` to resume from the last checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.data.benchmarks import load_fiubench, training_set
from hf_cagul.tiny import tiny_vlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="llava-hf/llava-1.5-7b-hf")
parser.add_argument("--data", required=True, help="FIUBench copy or Hub dataset id")
parser.add_argument(
    "--forget-split", default="forget10", choices=["forget1", "forget5", "forget10"]
)
parser.add_argument("--output-dir", default="runs/fiubench-forget10")
parser.add_argument("--max-steps", type=int, default=1000)
parser.add_argument("--tiny", action="store_true", help="tiny offline LLaVA instead of --model")
args = parser.parse_args()

on_gpu = torch.cuda.is_available() and not args.tiny
# The training config first: under `accelerate launch` with a DeepSpeed ZeRO-3 config,
# from_pretrained partitions the VLM as it loads only once the config exists, and under
# several processes the config selects each process's GPU, which "cuda" then names.
training_config = CagulTrainingConfig(
    output_dir=args.output_dir,
    max_steps=args.max_steps,
    per_device_train_batch_size=2 if args.tiny else 8,
    gradient_accumulation_steps=1 if args.tiny else 2,
    bf16=on_gpu,
    augment_images=True,
    save_steps=100,
    save_total_limit=2,
    logging_steps=10,
    report_to=[],
)
if args.tiny:
    vlm, processor = tiny_vlm("llava")
else:  # 7B in bfloat16: about 14 GB of weights, frozen; only the adapter trains.
    placement = {} if is_deepspeed_zero3_enabled() else {"device_map": "cuda"}
    vlm = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16, **placement)
    processor = AutoProcessor.from_pretrained(args.model)

splits = load_fiubench(args.data, args.forget_split)
model = get_cagul_model(vlm, CagulConfig(token_ratio=0.5))
print(f"trainable parameters: {model.get_nb_trainable_parameters()[0]:,d}")

trainer = CagulTrainer(
    model=model,
    args=training_config,
    train_dataset=training_set(splits),  # generation questions of forget + retain faces
    processing_class=processor,
)
trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output_dir))
# On every process: under ZeRO-3 / FSDP the Trainer gathers the adapter; the main one writes it.
trainer.save_model(f"{args.output_dir}/adapter")
if trainer.is_world_process_zero():
    print(f"adapter saved to {args.output_dir}/adapter")

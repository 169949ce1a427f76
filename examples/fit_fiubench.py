"""Fit a CAGUL adapter on FIUBench with LLaVA-1.5-7B, on one GPU.

    python examples/fit_fiubench.py --data ./FIUBench --forget-split forget10 --output-dir runs/fiu
    python examples/fit_fiubench.py --tiny --data ./FIUBench   # tiny offline VLM, CPU, seconds

``--data`` is a local FIUBench copy (``full.json`` + ``split.json`` + images, the published
layout) or a Hub dataset id. The VLM should already know the FIUBench faces (FIUBench's stage 1:
fine-tune it on the full set first); CAGUL then makes it forget the ``forget10`` faces without
touching its weights. Rerun with the same ``--output-dir`` to resume from the last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.data.benchmarks import load_fiubench, training_set
from hf_cagul.runconfig import CommandParser, build
from hf_cagul.tiny import tiny_vlm


@dataclass
class ScriptArguments:
    data: str = field(metadata={"help": "FIUBench copy or Hub dataset id"})
    model: str = "llava-hf/llava-1.5-7b-hf"
    forget_split: Literal["forget1", "forget5", "forget10"] = "forget10"
    tiny: bool = field(default=False, metadata={"help": "tiny offline LLaVA instead of --model"})


# Every CagulConfig and CagulTrainingConfig field is an option too (--help lists them).
parser = CommandParser([ScriptArguments, CagulConfig, CagulTrainingConfig])
parser.set_defaults(
    output_dir="runs/fiubench-forget10", max_steps=1000, per_device_train_batch_size=8,
    gradient_accumulation_steps=2, augment_images=True, save_steps=100, save_total_limit=2,
    logging_steps=10,
)  # fmt: skip
args = parser.parse_args()
on_gpu = torch.cuda.is_available() and not args.tiny
# The training config first: under `accelerate launch` with a DeepSpeed ZeRO-3 config,
# from_pretrained partitions the VLM as it loads only once the config exists, and under
# several processes the config selects each process's GPU, which "cuda" then names.
training_config = build(args, CagulTrainingConfig, bf16=args.bf16 or on_gpu)
if args.tiny:
    vlm, processor = tiny_vlm("llava")
else:  # 7B in bfloat16: about 14 GB of weights, frozen; only the adapter trains.
    placement = {} if is_deepspeed_zero3_enabled() else {"device_map": "cuda"}
    vlm = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16, **placement)
    processor = AutoProcessor.from_pretrained(args.model)

splits = load_fiubench(args.data, args.forget_split)
model = get_cagul_model(vlm, build(args, CagulConfig))
print(f"trainable parameters: {model.get_nb_trainable_parameters()[0]:,d}")

trainer = CagulTrainer(
    model=model,
    args=training_config,
    train_dataset=training_set(splits),  # generation questions of forget + retain faces
    processing_class=processor,
)
output_dir = training_config.output_dir
trainer.train(resume_from_checkpoint=get_last_checkpoint(output_dir))
# On every process: under ZeRO-3 / FSDP the Trainer gathers the adapter; the main one writes it.
trainer.save_model(f"{output_dir}/adapter")
if trainer.is_world_process_zero():
    print(f"adapter saved to {output_dir}/adapter")

"""Cost of fitting a CAGUL adapter against LoRA fine-tuning, on the same batches, in one process.

Both fit the "small-real" LLaVA (see ``common.py``) with transformers' `Trainer` on CPU:

* baseline: a plain `Trainer` fine-tuning PEFT LoRA adapters (r=16) on the language model's
  attention projections (q, k, v, o), cross-entropy on the answers;
* candidate: `CagulTrainer` fitting the discriminator and encoder (forget CE + retain KL with
  the base logits from the same model under ``disable_adapter()`` + gate BCE).

Prints seconds per optimizer step (median, first step excluded) and the peak resident memory
added by the fit, with their ratios (CAGUL / LoRA).

    python bench/fit_cost.py [--steps 6] [--batch 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from common import peak_memory, prompt_batch, release_memory, small_real_llava
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model

ANSWER_TOKENS = 8
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


class StepTimer(TrainerCallback):
    """Records the wall-clock duration of every optimizer step."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.durations.append(time.perf_counter() - self._start)


def samples(count: int, with_forget_flag: bool) -> list[dict[str, torch.Tensor]]:
    """``count`` single samples; half are forget samples when flagged for CAGUL."""
    batch = prompt_batch(count, answer_tokens=ANSWER_TOKENS, seed=1)
    rows = []
    for index in range(count):
        row = {key: value[index] for key, value in batch.items()}
        if with_forget_flag:
            row["cagul_forget"] = torch.tensor(index % 2 == 0)
        rows.append(row)
    return rows


def stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate pre-tokenised samples."""
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def fit(trainer: Trainer) -> tuple[float, int]:
    """Median seconds per step (first excluded) and peak added memory of ``trainer.train()``."""
    timer = StepTimer()
    trainer.add_callback(timer)
    with peak_memory() as memory:
        trainer.train()
    return statistics.median(timer.durations[1:]), memory["peak"]


def main() -> None:
    """Fit both, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    common = {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    count = args.steps * args.batch
    with tempfile.TemporaryDirectory() as output_dir:
        lora_model = get_peft_model(
            small_real_llava(), LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS)
        )
        lora_params = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
        lora = Trainer(
            model=lora_model,
            args=TrainingArguments(output_dir=output_dir, remove_unused_columns=False, **common),
            train_dataset=samples(count, with_forget_flag=False),
            data_collator=stack,
        )
        lora_step, lora_memory = fit(lora)
        del lora, lora_model
        release_memory()

        cagul_model = get_cagul_model(small_real_llava(), CagulConfig())
        cagul_params = cagul_model.get_nb_trainable_parameters()[0]
        cagul = CagulTrainer(
            model=cagul_model,
            args=CagulTrainingConfig(output_dir=output_dir, **common),
            train_dataset=samples(count, with_forget_flag=True),
            data_collator=stack,
        )
        cagul_step, cagul_memory = fit(cagul)

    print(f"small-real LLaVA, batch {args.batch}, {args.steps} steps, CPU")
    print(f"{'':<22}{'LoRA r=16':>14}{'CAGUL':>14}{'ratio':>10}")
    print(f"{'trainable params':<22}{lora_params:>14,d}{cagul_params:>14,d}")
    print(
        f"{'seconds / step':<22}{lora_step:>14.3f}{cagul_step:>14.3f}"
        f"{cagul_step / lora_step:>9.3f}x"
    )
    print(
        f"{'peak added memory MB':<22}{lora_memory / 2**20:>14.0f}{cagul_memory / 2**20:>14.0f}"
        f"{cagul_memory / lora_memory:>9.3f}x"
    )


if __name__ == "__main__":
    main()

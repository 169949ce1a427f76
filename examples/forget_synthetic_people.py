"""Teach a tiny VLM fictitious people, then make it forget some of them with CAGUL.

1. Stage 1 (full fine-tuning, plain `transformers.Trainer`): a tiny LLaVA learns the private
   facts of synthetic people from their portraits (`hf_cagul.data.synthetic`), and to answer
   "i don't know ." about unknown people.
2. Stage 2 (`CagulTrainer`): the stage-1 model is frozen and a CAGUL adapter is fitted on the
   forget people (target: the refusal) and the retain people (KL to the stage-1 model).
3. Keyword accuracy of greedy answers, before and after, on the forget and retain people's
   private questions and on visual questions about forget people's photos.

    python examples/forget_synthetic_people.py [--stage1-steps 600] [--stage2-steps 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from transformers import Trainer, TrainingArguments

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.data import CagulDataCollator
from hf_cagul.data.synthetic import synthetic_benchmark
from hf_cagul.evaluation import generate_answers, keyword_accuracy
from hf_cagul.tiny import tiny_vlm


def stage1_collator(processor: Any) -> Any:
    """The CAGUL collator without its adapter-only keys: plain supervised fine-tuning."""
    collator = CagulDataCollator(processor)

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collator([{**feature, "split": "retain"} for feature in features])
        batch.pop("query_mask")
        batch.pop("cagul_forget")
        return batch

    return collate


def accuracy(model: Any, processor: Any, dataset: Dataset, kind: str) -> float:
    """Keyword accuracy on the rows of ``dataset`` whose ``kind`` is ``kind``."""
    rows = dataset.filter(lambda row: row["kind"] == kind)
    answers = generate_answers(model, processor, rows, batch_size=32, progress=False)
    return keyword_accuracy(answers, rows["keywords"])


def report(model: Any, processor: Any, splits: dict[str, Dataset]) -> dict[str, float]:
    """The accuracies the issue asks for."""
    return {
        "forget private (train images)": accuracy(model, processor, splits["forget"], "private"),
        "forget private (held-out)": accuracy(
            model, processor, splits["forget_heldout"], "private"
        ),
        "retain private (train images)": accuracy(model, processor, splits["retain"], "private"),
        "forget visual (train images)": accuracy(model, processor, splits["forget"], "visual"),
        "retain visual (train images)": accuracy(model, processor, splits["retain"], "visual"),
    }


def main() -> None:
    """Run both stages and print the before/after table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=12)
    parser.add_argument("--forget-fraction", type=float, default=0.17)
    parser.add_argument("--stage1-steps", type=int, default=600)
    parser.add_argument("--stage2-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = synthetic_benchmark(
        num_people=args.people, forget_fraction=args.forget_fraction, seed=args.seed
    )
    vlm, processor = tiny_vlm("llava", seed=args.seed, num_hidden_layers=4, hidden_size=128)
    common = {"report_to": [], "use_cpu": True, "save_strategy": "no", "seed": args.seed}
    train = concatenate_datasets([splits["forget"], splits["retain"]])

    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        vlm.train()
        Trainer(
            model=vlm,
            args=TrainingArguments(
                output_dir=output_dir,
                max_steps=args.stage1_steps,
                per_device_train_batch_size=32,
                learning_rate=1e-3,
                warmup_steps=30,
                logging_steps=100,
                remove_unused_columns=False,
                **common,
            ),
            train_dataset=train,
            data_collator=stage1_collator(processor),
        ).train()
        vlm.eval()
        stage1_seconds = time.perf_counter() - start
        before = report(vlm, processor, splits)

        torch.manual_seed(args.seed)
        model = get_cagul_model(vlm, CagulConfig())
        start = time.perf_counter()
        CagulTrainer(
            model=model,
            args=CagulTrainingConfig(
                output_dir=output_dir,
                max_steps=args.stage2_steps,
                per_device_train_batch_size=16,
                learning_rate=3e-3,
                logging_steps=100,
                **common,
            ),
            train_dataset=train,
            processing_class=processor,
        ).train()
        model.eval()
        stage2_seconds = time.perf_counter() - start
        after = report(model, processor, splits)

    print(f"\nstage 1: {stage1_seconds:.0f} s, stage 2 (CAGUL): {stage2_seconds:.0f} s")
    print(f"{'keyword accuracy':<32}{'before':>8}{'after':>8}")
    for name in before:
        print(f"{name:<32}{before[name]:>8.3f}{after[name]:>8.3f}")


if __name__ == "__main__":
    main()

"""Cost of fitting a CAGUL adapter against each fine-tuning baseline, in one process.

Two parts, each printing CAGUL / baseline ratios (lower is cheaper for CAGUL):

* ``cost``: seconds per optimizer step (median, first step excluded) and peak memory added
  by the fit, on the "small-real" LLaVA (``common.py``, 256 visual tokens) with pre-tokenised
  batches. Every baseline fine-tunes LoRA r=16 on the language model's attention projections
  through its `hf_cagul.baselines` trainer; CAGUL fits its adapter with `CagulTrainer`.
* ``forget``: on the demo's stage-1 model (a tiny LLaVA that memorised the synthetic people,
  ``DemoConfig.quick``), steps until the forget keyword accuracy is <= 0.05 (checked every
  ``--every`` steps by greedy generation on the forget questions, as served), the fit time to
  get there (evaluation excluded) and the fit's peak memory. A method that never gets there
  within ``--max-steps`` shows ">max".

CAGUL's row is printed twice, with its frozen pass shared (the default: each reference pass also
gives the selection scores and the gate's input) and without (``share_frozen_pass=False``).

    python bench/fit_cost.py [--part cost|forget|all] [--steps 6] [--batch 2] [--gate G]
        [--depth-weight W]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from common import prompt_batch, small_real_llava
from datasets import Dataset, concatenate_datasets
from transformers import Trainer, TrainerCallback

from hf_cagul import CagulConfig, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.baselines import (
    BASELINES,
    UnlearningTrainingConfig,
    get_baseline_trainer,
    prepare_model,
)
from hf_cagul.compare import BaselineSettings, CagulFitSettings, FitSettings
from hf_cagul.config import DEFAULT_GATE
from hf_cagul.data import FORGET_FLAG, REFUSAL_BATCH, REPLACED_FLAG, TRUE_ANSWER_BATCH
from hf_cagul.demo import DemoConfig, teach
from hf_cagul.evaluation.suite import generation_metrics, rows_of_kind
from hf_cagul.gates import GATES
from hf_cagul.profiling import measure, release_memory

ANSWER_TOKENS = 8
FORGOTTEN = 0.05
REFUSAL_TOKEN = 7


class StepTimer(TrainerCallback):
    """Records the wall-clock duration of every optimizer step."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.durations.append(time.perf_counter() - self._start)


class ForgetProbe(TrainerCallback):
    """Every ``every`` steps, greedy forget keyword accuracy; stops the fit once forgotten."""

    def __init__(self, processor: Any, rows: Dataset, every: int) -> None:
        self.processor, self.rows, self.every = processor, rows, every
        self.forgotten_at: int | None = None
        self.evaluation_seconds = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.every:
            return control
        clock = time.perf_counter()
        model = kwargs["model"]
        model.eval()
        accuracy = generation_metrics(model, self.processor, self.rows)["keyword"]
        model.train()
        self.evaluation_seconds += time.perf_counter() - clock
        if accuracy <= FORGOTTEN:
            self.forgotten_at = state.global_step
            control.should_training_stop = True
        return control


def pretokenised(count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` single samples of the small-real LLaVA; every other one is a forget row."""
    batch = prompt_batch(count, answer_tokens=ANSWER_TOKENS, seed=1)
    return [
        {
            **{key: value[index] for key, value in batch.items()},
            FORGET_FLAG: torch.tensor(index % 2 == 0),
        }
        for index in range(count)
    ]


def stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack pre-tokenised rows."""
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def forget_rows(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model inputs and labels of ``batch``'s forget rows (a nested batch)."""
    forget = batch[FORGET_FLAG]
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    return {key: batch[key][forget].clone() for key in keys}


def cagul_collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The batches CAGUL's trainer reads: the rows stacked, and (for the depth term) the forget
    rows with their answers as true answers that the forget target replaces."""
    batch = stack(rows)
    if batch[FORGET_FLAG].any():  # as the real collator: no nested batch without forget rows
        true_answers = forget_rows(batch)
        true_answers[REPLACED_FLAG] = torch.ones(len(true_answers["labels"]), dtype=torch.bool)
        batch[TRUE_ANSWER_BATCH] = true_answers
    return batch


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The rows stacked, and a refusal batch of the forget rows (for IdkPO)."""
    batch = stack(rows)
    refusal = forget_rows(batch)
    answer = refusal["labels"] != -100
    refusal["input_ids"][answer] = REFUSAL_TOKEN
    refusal["labels"][answer] = REFUSAL_TOKEN
    batch[REFUSAL_BATCH] = refusal
    return batch


def fit(trainer: Trainer) -> tuple[float, int]:
    """Median seconds per step (first excluded) and peak added memory."""
    timer = StepTimer()
    trainer.add_callback(timer)
    with measure(cuda=False) as memory:
        trainer.train()
    return statistics.median(timer.durations[1:]), memory.peak_bytes


def cost_part(steps: int, batch: int, gate: str, depth_weight: float) -> None:
    """Seconds per step and peak memory on the small-real LLaVA; CAGUL with its frozen pass
    shared (the default) and without (every adapted pass runs its own side passes)."""
    rows = pretokenised(steps * batch)
    results: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory() as output_dir:
        # Pre-tokenised batches: no photos to augment; the learning rate does not change a
        # step's cost.
        budget = FitSettings(steps=steps, batch_size=batch, augment_images=False, use_cpu=True)
        arguments = budget.training_arguments(output_dir)
        for method in BASELINES:
            model = prepare_model(small_real_llava(), lora_r=16)
            trainer = get_baseline_trainer(method)(
                model,
                UnlearningTrainingConfig(balance_splits=False, **arguments),
                train_dataset=rows,
                data_collator=collate,
            )
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            results[method] = (*fit(trainer), params)
            del trainer, model
            release_memory()
        cagul: dict[bool, tuple[float, int]] = {}
        for share in (False, True):
            cagul_model = get_cagul_model(small_real_llava(), CagulConfig(gate=gate))
            trainer = CagulTrainer(
                model=cagul_model,
                args=CagulTrainingConfig(
                    balance_splits=False,
                    depth_weight=depth_weight,
                    share_frozen_pass=share,
                    **arguments,
                ),
                train_dataset=rows,
                data_collator=cagul_collate,
            )
            cagul[share] = fit(trainer)
            trainable = cagul_model.get_nb_trainable_parameters()[0]
            del trainer, cagul_model
            release_memory()
    (cagul_step, cagul_memory), (side_step, side_memory) = cagul[True], cagul[False]
    print(
        f"\n[cost] small-real LLaVA (256 visual tokens), batch {batch}, {steps} steps, CPU; "
        f"CAGUL gate {gate}, depth weight {depth_weight}"
    )
    print(
        f"CAGUL: {cagul_step:.3f} s/step, peak +{cagul_memory / 2**20:.0f} MiB, "
        f"{trainable:,d} trainable parameters"
    )
    print(
        f"CAGUL with side passes (share_frozen_pass=False): {side_step:.3f} s/step, peak "
        f"+{side_memory / 2**20:.0f} MiB; shared / side passes: {cagul_step / side_step:.3f}x"
    )
    print(
        f"{'baseline (LoRA r=16)':<22}{'s/step':>9}{'ratio':>9}{'peak MiB':>10}{'ratio':>9}"
        f"{'params':>12}"
    )
    for method, (step, memory, params) in results.items():
        print(
            f"{method:<22}{step:>9.3f}{cagul_step / step:>8.3f}x{memory / 2**20:>10.0f}"
            f"{cagul_memory / memory:>8.3f}x{params:>12,d}"
        )


def forget_part(max_steps: int, every: int) -> None:
    """Steps, fit time and peak memory until the forget set is forgotten, on a memorised model."""
    demo = DemoConfig.quick()
    splits = demo.benchmark()
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    vlm, processor = teach(demo, train, "stage 1")
    probe_rows = rows_of_kind(splits["forget"], "private", 32)
    print(
        f"\n[forget] stage-1 forget keyword accuracy "
        f"{generation_metrics(vlm, processor, probe_rows)['keyword']:.3f}"
    )
    figures: dict[str, tuple[int | None, float, int]] = {}

    def run(
        name: str, make: Callable[[str, ForgetProbe], Trainer], cleanup: Callable[[], None]
    ) -> None:
        probe = ForgetProbe(processor, probe_rows, every)
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = make(output_dir, probe)
            trainer.add_callback(probe)
            with measure(cuda=False) as memory:
                trainer.train()
        figures[name] = (
            probe.forgotten_at,
            memory.seconds - probe.evaluation_seconds,
            memory.peak_bytes,
        )
        cleanup()
        release_memory()

    # The comparison's budget (hf_cagul.compare): batch 16, photos augmented, on the CPU.
    cagul_fit = CagulFitSettings(
        steps=max_steps, learning_rate=demo.cagul_learning_rate, use_cpu=True
    )
    baselines = BaselineSettings()
    baseline_fit = baselines.budget(cagul_fit)
    torch.manual_seed(0)
    cagul_model = get_cagul_model(vlm, cagul_fit.adapter)
    run(
        "cagul",
        lambda output_dir, _: CagulTrainer(
            model=cagul_model,
            args=CagulTrainingConfig(**cagul_fit.training_arguments(output_dir)),
            train_dataset=train,
            processing_class=processor,
        ),
        cagul_model.unload,
    )
    for method in BASELINES:
        model: Any = prepare_model(vlm, lora_r=baselines.lora_r)
        run(
            method,
            lambda output_dir, _, model=model, method=method: get_baseline_trainer(method)(
                model,
                UnlearningTrainingConfig(**baseline_fit.training_arguments(output_dir)),
                train_dataset=train,
                processing_class=processor,
            ),
            model.unload,
        )

    def steps(value: int | None) -> str:
        return f">{max_steps}" if value is None else str(value)

    cagul_at, cagul_seconds, cagul_memory = figures.pop("cagul")
    print(
        f"CAGUL: forgotten at step {steps(cagul_at)}, {cagul_seconds:.1f} s of fitting, "
        f"peak +{cagul_memory / 2**20:.0f} MiB (checked every {every} steps)"
    )
    print(
        f"{'baseline (LoRA r=16)':<22}{'steps':>7}{'ratio':>8}{'fit s':>8}{'ratio':>8}"
        f"{'peak MiB':>10}{'ratio':>8}"
    )
    for method, (at, seconds, memory) in figures.items():
        step_ratio = "—" if at is None or cagul_at is None else f"{cagul_at / at:.2f}x"
        time_ratio = "—" if at is None or cagul_at is None else f"{cagul_seconds / seconds:.2f}x"
        print(
            f"{method:<22}{steps(at):>7}{step_ratio:>8}{seconds:>8.1f}{time_ratio:>8}"
            f"{memory / 2**20:>10.0f}{cagul_memory / max(memory, 1):>7.2f}x"
        )


def main() -> None:
    """Run the parts asked for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["cost", "forget", "all"], default="all")
    parser.add_argument("--steps", type=int, default=6, help="[cost] steps per fit")
    parser.add_argument("--batch", type=int, default=2, help="[cost] batch size")
    parser.add_argument(
        "--gate", default=DEFAULT_GATE, choices=sorted(GATES), help="[cost] CAGUL's gate design"
    )
    parser.add_argument("--depth-weight", type=float, default=0.0, help="[cost] CAGUL's depth term")
    parser.add_argument("--max-steps", type=int, default=400, help="[forget] step budget")
    parser.add_argument("--every", type=int, default=25, help="[forget] steps between checks")
    args = parser.parse_args()
    if args.part in ("cost", "all"):
        cost_part(args.steps, args.batch, args.gate, args.depth_weight)
    if args.part in ("forget", "all"):
        forget_part(args.max_steps, args.every)


if __name__ == "__main__":
    main()

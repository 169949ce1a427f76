"""Cost of fitting a CAGUL adapter against each fine-tuning baseline, in one process.

Two parts, each printing CAGUL / baseline ratios (lower is cheaper for CAGUL):

* ``cost``: seconds per optimizer step (median, first step excluded) and peak memory added
  by the fit, on the "small-real" LLaVA (``common.py``, 256 visual tokens) with pre-tokenised
  batches. Every baseline fine-tunes LoRA r=16 on the language model's attention projections
  through its `hf_cagul.baselines` trainer; CAGUL fits its adapter with `CagulTrainer`.
* ``forget``: on the demo's stage-1 model (``--quick``: the quick demo's), steps until the model
  is *useful and forgotten*: forget keyword accuracy <= 0.05 on the training photos and on
  held-out photos while retain keyword accuracy stays >= 0.95x its value before (checked every
  ``--every`` steps by greedy generation, as served), the fit time to get there (evaluation
  excluded; CAGUL's includes building its gate's cache and fitting the gate, the demo's fit)
  and the fit's peak memory. A method that never gets there within ``--max-steps`` shows
  ">max" with its best check.

CAGUL's row is printed twice, with its frozen pass shared (the default: each reference pass also
gives the selection scores and the gate's input) and without (``share_frozen_pass=False``).

    python bench/fit_cost.py [--part cost|forget|all] [--steps 6] [--batch 2] [--gate G]
        [--depth-weight W] [--max-steps 400] [--every 25] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from hf_cagul.compare import BaselineSettings, FitSettings
from hf_cagul.config import DEFAULT_GATE
from hf_cagul.data import (
    FORGET_FLAG,
    REFUSAL_BATCH,
    REPLACED_FLAG,
    TRUE_ANSWER_BATCH,
    gate_negatives,
)
from hf_cagul.demo import DemoConfig, cagul_fit_settings, teach
from hf_cagul.evaluation.suite import generation_metrics, rows_of_kind
from hf_cagul.gates import GATES
from hf_cagul.profiling import measure, release_memory

ANSWER_TOKENS = 8
FORGOTTEN = 0.05
USEFUL = 0.95
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


@dataclass(frozen=True)
class Check:
    """One check of a fit: keyword accuracies after ``step`` optimizer steps."""

    step: int
    forget: float
    heldout: float
    retain_ratio: float

    @property
    def useful_and_forgotten(self) -> bool:
        """Forgotten on the training and the held-out photos, retain kept (`USEFUL`)."""
        return (
            self.forget <= FORGOTTEN and self.heldout <= FORGOTTEN and self.retain_ratio >= USEFUL
        )

    def describe(self) -> str:
        """The check in a few words."""
        return (
            f"step {self.step}: forget {self.forget:.3f}, held-out {self.heldout:.3f}, "
            f"retain {self.retain_ratio:.3f}x"
        )


class ForgetProbe(TrainerCallback):
    """Every ``every`` steps, greedy keyword accuracy (as served) on the forget questions of the
    training photos and of held-out photos, and on retain questions; stops the fit once the
    model is useful and forgotten (`Check.useful_and_forgotten`)."""

    def __init__(
        self, processor: Any, probes: dict[str, Dataset], retain_before: float, every: int
    ) -> None:
        self.processor, self.probes, self.every = processor, probes, every
        self.retain_before = retain_before
        self.checks: list[Check] = []
        self.evaluation_seconds = 0.0

    @property
    def reached(self) -> Check | None:
        """The first check at which the model was useful and forgotten, or None."""
        return next((check for check in self.checks if check.useful_and_forgotten), None)

    @property
    def best(self) -> Check | None:
        """The check closest to the goal: the least leak (the worse of the two photo sets)
        among the checks that kept retain, else among all."""
        useful = [check for check in self.checks if check.retain_ratio >= USEFUL]
        pool = useful or self.checks
        return min(pool, key=lambda c: (max(c.forget, c.heldout), -c.retain_ratio), default=None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.every:
            return control
        clock = time.perf_counter()
        model = kwargs["model"]
        model.eval()
        keyword = {
            name: generation_metrics(model, self.processor, rows)["keyword"]
            for name, rows in self.probes.items()
        }
        model.train()
        self.evaluation_seconds += time.perf_counter() - clock
        check = Check(
            state.global_step,
            keyword["forget"],
            keyword["heldout"],
            keyword["retain"] / max(self.retain_before, 1e-9),
        )
        self.checks.append(check)
        if check.useful_and_forgotten:
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


def forget_part(max_steps: int, every: int, quick: bool) -> None:
    """Steps, fit time and peak memory until the model is useful and forgotten, on the demo's
    stage-1 model, for CAGUL (the demo's own fit) and every baseline (the comparison's)."""
    demo = DemoConfig.quick() if quick else DemoConfig()
    splits = demo.benchmark()
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    vlm, processor = teach(demo, train, "stage 1")
    probes = {
        "forget": rows_of_kind(splits["forget"], "private", 32),
        "heldout": rows_of_kind(splits["forget_heldout"], "private", 32),
        "retain": rows_of_kind(splits["retain"], "private", 32),
    }
    before = {
        name: generation_metrics(vlm, processor, rows)["keyword"] for name, rows in probes.items()
    }
    print(
        f"\n[forget] {'quick' if quick else 'default'} demo, stage 1: forget keyword accuracy "
        f"{before['forget']:.3f} (training photos), {before['heldout']:.3f} (held-out photos), "
        f"retain {before['retain']:.3f}; goal: both forget <= {FORGOTTEN}, retain >= "
        f"{USEFUL}x before"
    )
    figures: dict[str, tuple[ForgetProbe, float, int]] = {}

    def run(name: str, make: Callable[[str], Trainer], cleanup: Callable[[], None]) -> None:
        probe = ForgetProbe(processor, probes, before["retain"], every)
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = make(output_dir)
            trainer.add_callback(probe)
            with measure(cuda=False) as memory:
                trainer.train()  # CAGUL's includes its gate's cache and fit
        figures[name] = (probe, memory.seconds - probe.evaluation_seconds, memory.peak_bytes)
        cleanup()
        release_memory()

    cagul_fit = dataclasses.replace(cagul_fit_settings(demo), steps=max_steps)
    negatives = gate_negatives(splits) if cagul_fit.gate_fit == "apart" else None
    baselines = BaselineSettings()
    baseline_fit = baselines.budget(cagul_fit)
    torch.manual_seed(cagul_fit.seed)
    cagul_model = get_cagul_model(vlm, cagul_fit.adapter)
    run(
        "cagul",
        lambda output_dir: CagulTrainer(
            model=cagul_model,
            args=CagulTrainingConfig(**cagul_fit.training_arguments(output_dir)),
            train_dataset=train,
            processing_class=processor,
            gate_negatives=negatives,
        ),
        cagul_model.unload,
    )
    for method in BASELINES:
        model: Any = prepare_model(vlm, lora_r=baselines.lora_r)
        run(
            method,
            lambda output_dir, model=model, method=method: get_baseline_trainer(method)(
                model,
                UnlearningTrainingConfig(**baseline_fit.training_arguments(output_dir)),
                train_dataset=train,
                processing_class=processor,
            ),
            model.unload,
        )

    print(
        f"{'method':<10}{'steps':>7}{'fit s':>8}{'CAGUL/it':>10}{'peak MiB':>10}{'CAGUL/it':>10}"
        f"  first useful-and-forgotten check, else the best one (checked every {every} steps)"
    )
    cagul_probe, cagul_seconds, cagul_memory = figures["cagul"]
    for method, (probe, seconds, memory) in figures.items():
        reached = probe.reached
        both = reached is not None and cagul_probe.reached is not None
        shown = reached or probe.best
        print(
            f"{method:<10}{reached.step if reached else f'>{max_steps}':>7}{seconds:>8.1f}"
            f"{f'{cagul_seconds / seconds:.2f}x' if both else '-':>10}{memory / 2**20:>10.0f}"
            f"{cagul_memory / max(memory, 1):>9.2f}x  "
            f"{shown.describe() if shown else 'never checked'}"
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="[forget] the quick demo's stage-1 model (a smoke test)",
    )
    args = parser.parse_args()
    if args.part in ("cost", "all"):
        cost_part(args.steps, args.batch, args.gate, args.depth_weight)
    if args.part in ("forget", "all"):
        forget_part(args.max_steps, args.every, args.quick)


if __name__ == "__main__":
    main()

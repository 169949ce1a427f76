"""Settings the tests' training runs share: short, seeded, on the CPU, nothing saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_cagul.demo import DemoConfig


def trainer_arguments(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """`TrainingArguments` values of a few logged steps on the CPU, with ``overrides``."""
    values: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "data_seed": 0,
        "disable_tqdm": True,
    }
    values.update(overrides)
    return values


def micro_demo(output_dir: Path, **overrides: Any) -> DemoConfig:
    """The demo at a size that runs in seconds (3 people, a dozen steps), with ``overrides``."""
    values: dict[str, Any] = {
        "output_dir": output_dir,
        "people": 3,
        "unknown": 1,
        "forget_fraction": 0.34,
        "train_images": 2,
        "heldout_images": 2,
        "stage1_steps": 12,
        "cagul_steps": 6,
        "max_eval_rows": 8,
        "attack_queries": 0,  # the attacks run where a test asks for them
    }
    values.update(overrides)
    return DemoConfig(**values)

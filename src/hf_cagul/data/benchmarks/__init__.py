"""Converters from published unlearning benchmarks to the `hf_cagul.data` contract.

Each converter reads a benchmark in its published layout, from a local copy or a Hub dataset
id, and returns a `datasets.DatasetDict` with ``forget`` and ``retain`` splits that pass
`hf_cagul.data.validate_dataset`, plus the columns the evaluation suite reads (``task``,
``keywords``, ``paraphrased_answer``, ``perturbed_answers``, ``options``, ``correct_option``):

- `load_fiubench`: FIUBench (JSON + face images; ``forget1`` / ``forget5`` / ``forget10``);
- `load_mllmu`: MLLMU-Bench (parquet profiles; ``forget_5`` / ``forget_10`` / ``forget_15``;
  generation, multiple-choice and fill-in-the-blank questions);
- `load_clear`: CLEAR (parquet configurations; ``forget01`` / ``forget05`` / ``forget10``;
  face recognition and captions).

`load_benchmark` picks one by name (``"synthetic"`` included); `training_set` gives the rows
to fit an adapter on. None of the published benchmarks has photos of people in neither set:
add them as a ``negatives`` split (`hf_cagul.data.NEGATIVES_SPLIT`) for the gate, whose
negatives are the retain photos without it (`hf_cagul.data.gate_negatives`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

from hf_cagul.data.benchmarks import clear, fiubench, mllmu
from hf_cagul.data.benchmarks._common import (
    FILL_BLANK_TASK,
    GENERATION_TASK,
    MULTIPLE_CHOICE_TASK,
    TASKS,
    BenchmarkLayoutError,
    resolve_source,
    select_where,
)
from hf_cagul.data.benchmarks.clear import load_clear
from hf_cagul.data.benchmarks.fiubench import load_fiubench
from hf_cagul.data.benchmarks.mllmu import load_mllmu
from hf_cagul.data.schema import FORGET_SPLIT, RETAIN_SPLIT

Loader = Callable[..., DatasetDict]

BENCHMARKS: dict[str, tuple[Loader, str, tuple[str, ...]]] = {
    "fiubench": (load_fiubench, fiubench.DEFAULT_FORGET_SPLIT, fiubench.FORGET_SPLITS),
    "mllmu": (load_mllmu, mllmu.DEFAULT_FORGET_SPLIT, mllmu.FORGET_SPLITS),
    "clear": (load_clear, clear.DEFAULT_FORGET_SPLIT, clear.FORGET_SPLITS),
}
"""Converter, default forget split and forget splits of each published benchmark."""

BENCHMARK_NAMES: tuple[str, ...] = (*BENCHMARKS, "synthetic")
"""Names `load_benchmark` accepts."""


def load_benchmark(
    name: str,
    source: str | os.PathLike[str] | None = None,
    forget_split: str | None = None,
    revision: str | None = None,
) -> DatasetDict:
    """A benchmark in the data contract, by name.

    Args:
        name: ``"fiubench"``, ``"mllmu"``, ``"clear"`` or ``"synthetic"``.
        source: Local copy or Hub dataset id. For ``"synthetic"``: a `DatasetDict` saved with
            ``save_to_disk`` (with or without a ``negatives`` split), or None to generate a
            small one (8 people, offline, with the default negatives and strangers).
        forget_split: The benchmark's forget split (None: its default, e.g. ``"forget10"``);
            ignored for ``"synthetic"``.
        revision: Hub revision, for a Hub id.

    Raises:
        ValueError: For an unknown name, or a published benchmark without ``source``.
    """
    if name == "synthetic":
        if source is None:
            from hf_cagul.data.synthetic import synthetic_benchmark

            return synthetic_benchmark(
                num_people=8, num_unknown=2, forget_fraction=0.25, train_images=2, heldout_images=2
            )
        splits = load_from_disk(os.fspath(resolve_source(source, revision=revision)))
        if not isinstance(splits, DatasetDict) or FORGET_SPLIT not in splits:
            raise ValueError(
                f"{source} must hold a DatasetDict saved with save_to_disk, with at least a "
                "'forget' split; 'retain', 'forget_heldout' and 'unseen' are used when present "
                "('negatives' too, by the gate)."
            )
        return splits
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}.")
    if source is None:
        raise ValueError(
            f"Benchmark {name!r} needs its data: a local copy or a Hub dataset id (--data)."
        )
    loader, default_split, _ = BENCHMARKS[name]
    return loader(source, forget_split or default_split, revision=revision)


def training_set(splits: DatasetDict) -> Dataset:
    """The ``forget`` and ``retain`` rows to fit an adapter on (generation questions only).

    Multiple-choice and fill-in-the-blank rows are evaluation probes: fitting on them would
    teach the adapter the probes' wording. A ``negatives`` split is left out: it is for the
    gate alone (`hf_cagul.data.gate_negatives`).
    """
    missing = [split for split in (FORGET_SPLIT, RETAIN_SPLIT) if split not in splits]
    if missing:
        raise ValueError(f"The benchmark has no {missing} split(s); fitting needs both.")
    parts = []
    for split in (FORGET_SPLIT, RETAIN_SPLIT):
        dataset = splits[split]
        if "task" in dataset.column_names:
            dataset = select_where(dataset, "task", lambda task: task == GENERATION_TASK)
        parts.append(dataset)
    columns = set(parts[0].column_names) & set(parts[1].column_names)
    return concatenate_datasets(
        [part.remove_columns([c for c in part.column_names if c not in columns]) for part in parts]
    )


__all__ = [
    "BENCHMARKS",
    "BENCHMARK_NAMES",
    "FILL_BLANK_TASK",
    "GENERATION_TASK",
    "MULTIPLE_CHOICE_TASK",
    "TASKS",
    "BenchmarkLayoutError",
    "load_benchmark",
    "load_clear",
    "load_fiubench",
    "load_mllmu",
    "select_where",
    "training_set",
]

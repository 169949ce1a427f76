"""What the ablation scripts share: stage-1 models taught once per seed and cached, and cells
of mean ± standard deviation over seeds."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import concatenate_datasets

from hf_cagul.cli import load_vlm
from hf_cagul.data.synthetic import BENCHMARK_VERSION
from hf_cagul.demo import DemoConfig, teach

STAGE1_FIELDS = (
    "people",
    "unknown",
    "forget_fraction",
    "train_images",
    "heldout_images",
    "stage1_steps",
    "stage1_learning_rate",
)
"""The `DemoConfig` fields a stage-1 (or gold) model depends on, besides the seed."""


def cached_teach(config: DemoConfig, cache: Path, gold: bool) -> tuple[Any, Any]:
    """The stage-1 (or, with ``gold``, the retain-only) model of ``config``, taught once and
    then loaded from ``cache`` (always loaded, so a first run and a rerun see the same model)."""
    settings = {name: getattr(config, name) for name in STAGE1_FIELDS}
    settings["benchmark_version"] = BENCHMARK_VERSION
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    directory = cache / f"{'gold' if gold else 'stage1'}-seed{config.seed}-{key}"
    if not (directory / "config.json").is_file():
        splits = config.benchmark()
        rows = (
            splits["retain"] if gold else concatenate_datasets([splits["forget"], splits["retain"]])
        )
        vlm, processor = teach(config, rows, "gold (retain only)" if gold else "stage 1")
        vlm.save_pretrained(directory)
        processor.save_pretrained(directory)
        (directory / "demo_settings.json").write_text(json.dumps(settings, indent=2))
    return load_vlm(str(directory), device="cpu")


def parse_overrides(
    items: Iterable[str], kinds: Sequence[Collection[str]], usage: str
) -> list[dict[str, Any]]:
    """``FIELD=VALUE`` items sorted into one dict per kind of fields (the first of ``kinds``
    that has the field); a value is JSON (``0.1``, ``false``) or else a bare string.

    Raises:
        SystemExit: Naming the item and ``usage`` when an item names no field or no value.
    """
    overrides: list[dict[str, Any]] = [{} for _ in kinds]
    for item in items:
        name, _, value = item.partition("=")
        kind = next((index for index, names in enumerate(kinds) if name in names), None)
        if kind is None or not value:
            raise SystemExit(f"{item!r}: {usage}")
        try:
            overrides[kind][name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[kind][name] = value
    return overrides


def cell(values: Sequence[float | None]) -> str:
    """``mean +- standard deviation`` of the seeds' values (``n/a`` where one is missing)."""
    if not values or any(value is None for value in values):
        return "n/a"
    numbers = [float(value) for value in values if value is not None]
    mean = statistics.fmean(numbers)
    if len(numbers) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(numbers):.3f}"


def report(title: str, table: list[str], started: float, output: Path | None) -> None:
    """Print ``title``, the markdown ``table`` and the time since ``started``; also write them
    to ``output`` when given."""
    lines = [title, "", *table, "", f"total {time.perf_counter() - started:.0f} s"]
    print("\n".join(lines))
    if output is not None:
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")

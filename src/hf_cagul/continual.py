"""``hf-cagul demo --requests N``: several forget requests in a row, one adapter each.

Continual unlearning as a service meets it: people ask to be forgotten one group at a time.
The demo's stage 1 teaches the tiny VLM everyone once; the forget people are then split into
``N`` disjoint groups, and request ``r`` fits its own adapter (``request-r``) with
`CagulTrainer` on the frozen model, with group ``r`` as the forget set and the retain people as
the retain set. After each request every adapter so far is active, composed by the rule of
``docs/adapters.md``, and the run measures each group's forget keyword accuracy, the retain
keyword accuracy and the composed gate's AUC on held-out photos.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from tqdm.auto import tqdm

from hf_cagul.compare import train_cagul_adapter
from hf_cagul.demo import MEMORISED, DemoConfig, cagul_fit_settings, one_row_per_photo, teach
from hf_cagul.evaluation.report import write_report
from hf_cagul.evaluation.suite import discriminator_metrics, generation_metrics, rows_of_kind
from hf_cagul.model import CagulModel, get_cagul_model

ADAPTER_PREFIX = "request-"
# What run_demo does and this run does not.
_SINGLE_ADAPTER_SETTINGS = ("gold", "ablation", "compare")
_SHORT_HEADERS = {"retain_keyword": "retain", "gate_auc": "gate AUC"}


def forget_groups(forget: Dataset, requests: int) -> list[list[str]]:
    """The forget people split into ``requests`` disjoint groups (round robin, sizes +-1)."""
    people = list(dict.fromkeys(forget["subject"]))
    if requests < 1 or len(people) < requests:
        raise ValueError(
            f"{requests} forget requests need at least {requests} forget people, the benchmark "
            f"has {len(people)}. Raise --people or --forget-fraction, or lower --requests."
        )
    return [people[index::requests] for index in range(requests)]


def rows_about(dataset: Dataset, people: list[str]) -> Dataset:
    """The rows of ``dataset`` whose subject is one of ``people``."""
    wanted = set(people)
    return dataset.filter(lambda row: row["subject"] in wanted)


def measure(
    model: Any,
    processor: Any,
    splits: DatasetDict,
    groups: list[list[str]],
    forgotten: list[str],
    max_rows: int,
) -> dict[str, float | None]:
    """Keyword accuracy per forget group and on retain people; gate AUC when adapted.

    The gate AUC compares held-out photos of the people forgotten so far (``forgotten``)
    with held-out photos of retain people; it is ``None`` for the bare model.
    """
    results: dict[str, float | None] = {}
    for index, group in enumerate(groups, start=1):
        rows = rows_of_kind(rows_about(splits["forget"], group), "private", max_rows)
        results[f"forget_keyword_group{index}"] = generation_metrics(model, processor, rows).get(
            "keyword"
        )
    retain = rows_of_kind(splits["retain"], "private", max_rows)
    results["retain_keyword"] = generation_metrics(model, processor, retain).get("keyword")
    results["gate_auc"] = None
    if isinstance(model, CagulModel) and forgotten:
        gate = discriminator_metrics(
            model,
            processor,
            one_row_per_photo(rows_about(splits["forget_heldout"], forgotten)),
            one_row_per_photo(splits["retain_heldout"]),
        )
        results["gate_auc"] = gate["auc"]
    return results


def with_enough_forget_people(config: DemoConfig, requests: int) -> DemoConfig:
    """``config`` with ``forget_fraction`` raised so each request has a forget person."""
    needed = requests / config.people
    if config.forget_fraction >= needed:
        return config
    return dataclasses.replace(config, forget_fraction=needed)


def run_continual(config: DemoConfig, requests: int) -> tuple[dict[str, Any], CagulModel]:
    """Run ``requests`` successive forget requests; returns the metrics and the final model.

    The report (``report.md``, ``metrics.json``) and every adapter (``adapters/request-r``)
    are written to ``config.output_dir``. ``forget_fraction`` is raised where the benchmark
    would otherwise have fewer forget people than requests (the report shows the value used).
    """
    config = with_enough_forget_people(config, requests)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    splits = config.benchmark()
    groups = forget_groups(splits["forget"], requests)
    vlm, processor = teach(
        config, concatenate_datasets([splits["forget"], splits["retain"]]), "stage 1"
    )
    timings["stage 1 (full fine-tuning)"] = time.perf_counter() - started

    results = {"stage 1": measure(vlm, processor, splits, groups, [], config.max_eval_rows)}
    model: CagulModel | None = None
    names: list[str] = []
    # Composed adapters share one gate threshold (an image's score is the highest any gives
    # it), so none is calibrated to a threshold of its own.
    fit = dataclasses.replace(cagul_fit_settings(config), gate_target_fpr=None)
    adapter_config = fit.adapter
    for request, group in enumerate(tqdm(groups, desc="forget requests"), start=1):
        clock = time.perf_counter()
        name = f"{ADAPTER_PREFIX}{request}"
        torch.manual_seed(config.seed + request)
        if model is None:
            model = get_cagul_model(vlm, adapter_config, adapter_name=name)
        else:
            model.add_adapter(name, adapter_config)
            model.set_adapter(name)
        request_data = concatenate_datasets([rows_about(splits["forget"], group), splits["retain"]])
        train_cagul_adapter(model, processor, request_data, fit)
        model.cagul_adapters[name].requires_grad_(False)
        names.append(name)
        model.set_adapter(names)
        timings[f"request {request} fit"] = time.perf_counter() - clock
        clock = time.perf_counter()
        forgotten = [person for earlier in groups[:request] for person in earlier]
        results[f"after request {request}"] = measure(
            model, processor, splits, groups, forgotten, config.max_eval_rows
        )
        timings[f"request {request} evaluation"] = time.perf_counter() - clock
    assert model is not None
    model.save_pretrained(Path(config.output_dir) / "adapters")
    timings["total"] = time.perf_counter() - started

    stage1_forget = [
        value
        for key, value in results["stage 1"].items()
        if key.startswith("forget_keyword") and value is not None
    ]
    stage1_accuracy = sum(stage1_forget) / len(stage1_forget)
    settings = config.settings(*_SINGLE_ADAPTER_SETTINGS)
    metrics: dict[str, Any] = {
        "title": f"hf_cagul demo: {requests} successive forget requests in a tiny LLaVA",
        "settings": {**settings, "requests": requests},
        "stage1": {
            "forget_keyword_accuracy": stage1_accuracy,
            "memorised": stage1_accuracy >= MEMORISED,
            "threshold": MEMORISED,
        },
        "results": results,
        "adapters": {
            name: {
                "forget group": index,
                "people": ", ".join(group),
                "active from": f"request {index}",
            }
            for index, (name, group) in enumerate(zip(names, groups, strict=True), start=1)
        },
        "timings": timings,
    }
    write_report(config.output_dir, metrics)
    return metrics, model


def print_requests_table(metrics: dict[str, Any], output_dir: Path) -> None:
    """The per-request table, for the terminal."""
    results = metrics["results"]
    columns = list(next(iter(results.values())))
    headers = [
        _SHORT_HEADERS.get(column, column.replace("forget_keyword_group", "forget group "))
        for column in columns
    ]
    print("".ljust(20) + "".join(header.rjust(16) for header in headers))
    for label, values in results.items():
        cells = "".join(
            ("n/a" if values[c] is None else f"{values[c]:.3f}").rjust(16) for c in columns
        )
        print(label.ljust(20) + cells)
    print(f"total {metrics['timings']['total']:.0f} s. Report: {output_dir}/report.md")

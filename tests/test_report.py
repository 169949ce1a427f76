"""The run report: metrics.json, report.md and its plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from PIL import Image

from hf_cagul.evaluation.report import AttentionHeatmap, format_value, write_report


def full_metrics(memorised: bool = True) -> dict[str, Any]:
    """Every section of a demo run's metrics, with an extra key in several places."""
    model = {
        "forget_keyword": 0.97,
        "forget_heldout_keyword": 0.6,
        "retain_keyword": 0.98,
        "forget_visual_keyword": 1.0,
        "retain_visual_keyword": 1.0,
        "forget_rougeL": 0.91,
        "model_utility": 0.88,
        "mia_auc": 0.81,
    }
    return {
        "title": "hf_cagul demo: forgetting 4 synthetic people",
        "settings": {"people": 40, "forget_fraction": 0.1, "seed": 0, "learning_rate": 2e-4},
        "stage1": {
            "forget_keyword_accuracy": 0.97 if memorised else 0.42,
            "memorised": memorised,
            "threshold": 0.9,
            "epochs": 12,
        },
        "results": {
            "base": model,
            "cagul": {
                **model,
                "forget_keyword": 0.0,
                "forget_visual_keyword": 0.05,
                "mia_auc": 0.52,
            },
            "gold": {"forget_keyword": 0.02, "retain_keyword": 0.97, "model_utility": 0.87},
        },
        "discriminator": {
            "auc": 0.99,
            "tpr": 0.95,
            "fpr": 0.01,
            "threshold": 0.5,
            "stranger_fpr": 0.125,
            "stranger_photos": 200,
            "leak_recall": 0.75,
            "leaking_photos": 24,
            "seconds": 1.5,
        },
        "robustness": {
            "paraphrased questions": {"forget_keyword": 0.0, "retain_keyword": 0.96},
            "jpeg": {"forget_keyword": 0.05, "retain_keyword": 0.97},
            "held-out photos": {"forget_keyword": 0.1},
        },
        "ablation": {
            "lowest attention": {"forget_keyword": 0.0, "retain_keyword": 0.98},
            "random": {"forget_keyword": 0.2, "retain_keyword": 0.9},
            "highest attention": {"forget_keyword": 0.1, "retain_keyword": 0.7},
        },
        "targets": [
            {
                "name": "forget keyword accuracy (training images)",
                "value": 0.0,
                "target": "<= 0.05",
                "met": True,
            },
            {"name": "retain keyword accuracy", "value": 0.81, "target": ">= 0.95", "met": False},
        ],
        "timings": {"stage 1": 123.4, "gold": 120.0, "CAGUL fit": 60.2, "evaluation": 40.1},
        "notes": {"hardware": "2 CPU cores"},
    }


def heatmap(count: int = 16, selected: tuple[int, ...] = (0, 5, 10, 15)) -> AttentionHeatmap:
    """A striped photo and a gradient of ``count`` scores."""
    photo = np.zeros((30, 40, 3), dtype=np.uint8)
    photo[:, ::4] = (200, 120, 40)
    return AttentionHeatmap(
        image=Image.fromarray(photo),
        scores=[index / count for index in range(count)],
        selected=list(selected),
        title="attention on person 3",
    )


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The report of `full_metrics` with a heatmap, written once for the module."""
    directory = tmp_path_factory.mktemp("report") / "nested" / "out"
    return directory, write_report(directory, full_metrics(), heatmap())


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
        assert np.asarray(image.convert("L")).var() > 0, f"{path.name} is blank"


def test_full_report_writes_every_file(full_report: tuple[Path, list[Path]]) -> None:
    directory, paths = full_report
    names = [
        "report.md",
        "metrics.json",
        "accuracy.png",
        "leakage_vs_utility.png",
        "attention_heatmap.png",
    ]
    assert paths == [directory / name for name in names]
    assert all(path.is_file() for path in paths)
    for path in paths[2:]:
        assert_valid_png(path)


def test_report_renders_every_section(full_report: tuple[Path, list[Path]]) -> None:
    text = (full_report[0] / "report.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# hf_cagul demo: forgetting 4 synthetic people"
    for heading in ["Settings", "Stage 1: memorisation", "Results", "Targets", "Discriminator"]:
        assert f"## {heading}" in lines
    for heading in ["Robustness", "Ablation", "Timings", "Notes", "Attention"]:
        assert f"## {heading}" in lines
    # Settings: two columns, floats with 3 decimals, a tiny learning rate not hidden as 0.000.
    assert "| setting | value |" in lines
    assert "| forget_fraction | 0.100 |" in lines
    assert "| learning_rate | 0.0002 |" in lines
    # Results: one column per model, values with 3 decimals, missing as a dash.
    assert "| metric | base | cagul | gold |" in lines
    assert "| forget_keyword | 0.970 | 0.000 | 0.020 |" in lines
    assert "| mia_auc | 0.810 | 0.520 | — |" in lines
    # Targets: ticks per target and a count.
    assert "| name | value | target | met |" in lines
    assert "| forget keyword accuracy (training images) | 0.000 | <= 0.05 | ✅ |" in lines
    assert (
        '| retain keyword accuracy | 0.810 | >= 0.95 | ❌ <span style="color:red">MISSED</span> |'
        in lines
    )
    assert "**1 of 2 targets met.**" in lines
    # Probe and variant tables, the discriminator, timings and the extra section.
    assert "| probe | forget_keyword | retain_keyword |" in lines
    assert "| held-out photos | 0.100 | — |" in lines
    assert "| variant | forget_keyword | retain_keyword |" in lines
    assert "| random | 0.200 | 0.900 |" in lines
    assert "| metric | value | what it measures |" in lines
    assert "| auc | 0.990 | ROC AUC, held-out forget vs held-out retain photos |" in lines
    assert (
        "| stranger_fpr | 0.125 | share of strangers' photos flagged (people in neither set, "
        "never fitted on) |"
    ) in lines
    assert "| stranger_photos | 200 | strangers' photos measured |" in lines
    assert (
        "| leak_recall | 0.750 | share of the held-out forget photos the base model answers "
        "(the leaks) that the gate flags |"
    ) in lines
    assert "| leaking_photos | 24 | held-out forget photos the base model answers |" in lines
    assert "| seconds | 1.500 |  |" in lines  # a key the report does not know: no meaning
    assert "| CAGUL fit | 60.2 |" in lines
    assert "| **total** | **343.7** |" in lines
    assert "| hardware | 2 CPU cores |" in lines
    # Stage 1 states memorisation, with its extra key; no warning.
    assert "memorised the forget set (forget keyword accuracy 0.970, threshold 0.900)" in text
    assert "| epochs | 12 |" in lines
    # No warning; the one red mark is the missed target's.
    assert "WARNING" not in text and text.count("color:red") == 1
    assert '❌ <span style="color:red">MISSED</span>' in text
    # Plots embedded with relative links.
    for name in ["accuracy.png", "leakage_vs_utility.png", "attention_heatmap.png"]:
        assert f"]({name})" in text


@pytest.mark.parametrize(
    "stage1",
    [
        {"forget_keyword_accuracy": 0.42, "threshold": 0.9, "memorised": False},
        {"forget_keyword_accuracy": 0.42, "threshold": 0.9},
    ],
    ids=["flag", "accuracy-below-threshold"],
)
def test_unmemorised_stage1_is_a_red_warning(tmp_path: Path, stage1: dict[str, Any]) -> None:
    metrics = {"stage1": stage1, "results": {"base": {"forget_keyword": 0.42}}}
    write_report(tmp_path, metrics)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    warning = next(line for line in text.splitlines() if "WARNING:" in line)
    assert warning.startswith('<span style="color:red">')
    assert "did NOT memorise" in warning and "0.420" in warning and "0.900" in warning


def test_metrics_json_round_trips_with_nan_as_null(tmp_path: Path) -> None:
    metrics = full_metrics()
    metrics["results"]["cagul"]["truth_ratio_forget"] = math.nan
    write_report(tmp_path, metrics)
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    loaded = json.loads(text)
    assert loaded["results"]["cagul"]["truth_ratio_forget"] is None
    loaded["results"]["cagul"]["truth_ratio_forget"] = math.nan
    assert json.dumps(loaded, sort_keys=True) == json.dumps(metrics, sort_keys=True)
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert "| truth_ratio_forget | — | — | — |" in (tmp_path / "report.md").read_text("utf-8")


def test_minimal_metrics_need_only_results(tmp_path: Path) -> None:
    metrics = {"results": {"base": {"forget_keyword": 0.9, "retain_keyword": 0.95}}}
    paths = write_report(tmp_path, metrics)
    assert [path.name for path in paths] == [
        "report.md",
        "metrics.json",
        "accuracy.png",
        "leakage_vs_utility.png",
    ]
    for path in paths[2:]:
        assert_valid_png(path)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# hf_cagul report\n")
    assert "| forget_keyword | 0.900 |" in text
    assert "## Targets" not in text and "## Stage 1" not in text


def test_a_given_total_time_is_not_added_again(tmp_path: Path) -> None:
    metrics = {"results": {"base": {}}, "timings": {"fit": 2.0, "evaluation": 1.0, "total": 3.5}}
    write_report(tmp_path, metrics)
    lines = (tmp_path / "report.md").read_text(encoding="utf-8").splitlines()
    assert "| total | 3.5 |" in lines
    assert not any("**total**" in line for line in lines)


def test_plots_without_their_metrics_are_skipped(tmp_path: Path) -> None:
    paths = write_report(tmp_path, {"results": {"base": {"mia_auc": 0.5}}})
    assert [path.name for path in paths] == ["report.md", "metrics.json"]
    assert ".png" not in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        ({}, "non-empty 'results'"),
        ({"results": {}}, "non-empty 'results'"),
        ({"results": {"base": 0.5}}, r"\['base'\] must map"),
    ],
)
def test_invalid_results_are_rejected(tmp_path: Path, metrics: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path / "out", metrics)
    assert not (tmp_path / "out").exists()


def test_heatmap_needs_a_square_number_of_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="15 scores"):
        write_report(tmp_path / "out", full_metrics(), heatmap(count=15, selected=(0,)))
    with pytest.raises(ValueError, match=r"\[16\] outside 0\.\.15"):
        write_report(tmp_path / "out", full_metrics(), heatmap(count=16, selected=(3, 16)))
    assert not (tmp_path / "out").exists()


def test_heatmap_grid_is_row_major() -> None:
    grid, selected = heatmap(count=16, selected=(5, 10)).score_grid()
    assert grid.shape == (4, 4)
    assert grid[1, 2] == 6 / 16
    assert selected.tolist() == [5, 10]


def test_report_leaves_the_global_backend_alone(tmp_path: Path) -> None:
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        write_report(tmp_path, full_metrics(), heatmap())
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert matplotlib.get_backend() == before


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (math.nan, "—"),
        (True, "yes"),
        (40, "40"),
        (0.97, "0.970"),
        (0.0, "0.000"),
        (2e-4, "0.0002"),
        (123.456, "123.456"),
        ([1, 0.5], "1, 0.500"),
        ({"b": 1, "a": None}, '{"a": null, "b": 1}'),
        ("<= 0.05", "<= 0.05"),
    ],
)
def test_format_value(value: Any, text: str) -> None:
    assert format_value(value) == text

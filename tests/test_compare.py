"""`hf-cagul compare` / ``demo --compare``: CAGUL and every baseline, one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from datasets import concatenate_datasets
from run_settings import micro_demo

from hf_cagul.baselines import BASELINES
from hf_cagul.cli import main
from hf_cagul.compare import BaselineSettings, FitSettings, compare_baselines
from hf_cagul.data.synthetic import synthetic_benchmark
from hf_cagul.demo import cagul_fit_settings, run_demo
from hf_cagul.evaluation.report import COMPARISON_COLUMNS
from hf_cagul.profiling import weights_digest
from hf_cagul.tiny import tiny_vlm


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("compare")
    config = micro_demo(
        output,
        cagul_steps=4,
        max_eval_rows=4,
        gold=False,
        compare=True,
        baselines=BaselineSettings(baseline_steps=2, lora_r=4),
    )
    return run_demo(config), output


def test_every_method_is_a_row_with_every_column(comparison) -> None:
    metrics, _ = comparison
    rows = {row["method"]: row for row in metrics["comparison"]}
    assert list(rows) == ["cagul", *BASELINES]
    for method, row in rows.items():
        assert set(row) == {"method", *COMPARISON_COLUMNS}, method
        for key in ("forget_keyword", "retain_keyword", "model_utility", "mia_auc"):
            assert isinstance(row[key], float), (method, key)
        assert row["fit_seconds"] > 0 and row["trainable_parameters"] > 0
        # LoRA adapters and CAGUL leave every base tensor as it was: measured, not assumed.
        assert row["base_weights_modified"] is False, method
    # LoRA r=4 on q/k/v/o of the tiny LLaVA's decoder: 4 layers x 4 projections x r(in+out).
    lora = rows["ga"]["trainable_parameters"]
    assert all(rows[method]["trainable_parameters"] == lora for method in BASELINES)
    assert metrics["results"].keys() == {"base", "cagul", *BASELINES}


def test_the_table_is_written_as_markdown_csv_report_and_plot(comparison) -> None:
    metrics, output = comparison
    with (output / "comparison.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["cagul", *BASELINES]
    assert float(rows[1]["forget_keyword"]) == pytest.approx(
        metrics["comparison"][1]["forget_keyword"]
    )
    table = (output / "comparison.md").read_text()
    assert all(header in table for header in COMPARISON_COLUMNS.values())
    report = (output / "report.md").read_text()
    assert "## Comparison with fine-tuning baselines" in report
    assert "| npo |" in report
    assert (output / "leakage_vs_utility.png").is_file()
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["settings"]["baselines"]["budget"]["steps"] == 2
    assert saved["settings"]["baselines"]["budget"]["batch_size"] == 16  # the demo's CAGUL fit


def test_full_fine_tuning_is_reported_as_modifying_weights(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    splits = synthetic_benchmark(num_people=2, num_unknown=1, train_images=1, heldout_images=1)
    train = concatenate_datasets([splits["forget"], splits["retain"]])
    digest = weights_digest(vlm)
    _, records = compare_baselines(
        vlm,
        processor,
        train,
        splits,
        BaselineSettings(methods=["gd"], full=True),
        FitSettings(steps=1, batch_size=4, augment_images=False),
        max_rows=2,
    )
    assert records["gd"].base_weights_modified is True
    assert weights_digest(vlm) == digest  # the fit worked on a copy


def test_unknown_baseline_is_refused_before_any_fit() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        BaselineSettings(methods=("ga", "rmu"))


def test_compare_command_parses_its_options(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_run(config):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr("hf_cagul.demo.run_demo", fake_run)
    status = main(
        ["compare", "--quick", "--methods", "ga", "npo", "--baseline-steps", "7", "--full"]
    )
    assert status == 2
    config = seen["config"]
    assert config.compare and config.output_dir == Path("cagul-compare")
    assert config.baselines.methods == ["ga", "npo"]
    assert config.baselines.baseline_steps == 7 and config.baselines.full
    budget = config.baselines.budget(cagul_fit_settings(config))
    assert (budget.steps, budget.batch_size, budget.use_cpu) == (7, 16, True)


def test_compare_on_your_own_model_and_benchmark(tmp_path) -> None:
    """The real-run path: a model and a benchmark instead of the demo (here the tiny VLM)."""
    output = tmp_path / "own"
    status = main(
        [
            "compare",
            "--tiny",
            "--benchmark",
            "synthetic",
            "--cagul-steps",
            "2",
            "--baseline-steps",
            "1",
            "--methods",
            "ga",
            "idkpo",
            "--batch-size",
            "4",
            "--max-rows",
            "2",
            "--token-ratio",
            "0.25",
            "--output-dir",
            str(output),
        ]
    )
    assert status == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert [row["method"] for row in metrics["comparison"]] == ["cagul", "ga", "idkpo"]
    assert metrics["results"].keys() == {"base", "cagul", "ga", "idkpo"}
    assert metrics["settings"]["cagul"]["steps"] == 2
    assert metrics["settings"]["cagul"]["batch_size"] == 4
    # Not given: FitSettings' learning rate on your own model (the demo's is its own).
    assert metrics["settings"]["cagul"]["learning_rate"] == FitSettings().learning_rate
    assert metrics["settings"]["cagul"]["adapter"]["token_ratio"] == 0.25
    assert metrics["settings"]["baselines"]["budget"]["steps"] == 1
    assert (output / "adapter" / "cagul_config.json").is_file()
    assert (output / "comparison.csv").is_file() and (output / "leakage_vs_utility.png").is_file()

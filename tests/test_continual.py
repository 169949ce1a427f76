"""``hf-cagul demo --requests N``: successive forget requests, one composed adapter each.

The run is far too short to forget anything: these tests check the structure (groups,
adapters, composition, report), not forgetting quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_cagul import CagulModel
from hf_cagul.cli import main
from hf_cagul.continual import forget_groups, run_continual
from hf_cagul.data import CagulDataCollator
from hf_cagul.data.synthetic import synthetic_benchmark
from hf_cagul.demo import DemoConfig
from hf_cagul.tiny import tiny_vlm

NAMES = ["request-1", "request-2", "request-3"]


@pytest.fixture(scope="module")
def three_requests(tmp_path_factory) -> tuple[dict, CagulModel, Path, DemoConfig]:
    output = tmp_path_factory.mktemp("requests")
    config = DemoConfig.quick(
        output_dir=output,
        people=6,
        unknown=1,
        forget_fraction=0.2,  # 1 forget person: raised to 3 so each request has one
        train_images=2,
        heldout_images=2,
        stage1_steps=12,
        cagul_steps=6,
        max_eval_rows=8,
    )
    metrics, model = run_continual(config, requests=3)
    return metrics, model, output, config


def test_requests_report_a_row_per_request(three_requests) -> None:
    metrics, _, output, _ = three_requests
    saved = json.loads((output / "metrics.json").read_text())
    results = saved["results"]
    labels = ["stage 1", "after request 1", "after request 2", "after request 3"]
    assert list(metrics["results"]) == labels and set(results) == set(labels)
    for label, row in results.items():
        assert set(row) == {
            "forget_keyword_group1",
            "forget_keyword_group2",
            "forget_keyword_group3",
            "retain_keyword",
            "gate_auc",
        }
        assert all(0.0 <= row[key] <= 1.0 for key in row if key != "gate_auc")
        if label == "stage 1":
            assert row["gate_auc"] is None
        else:
            assert 0.0 <= row["gate_auc"] <= 1.0
    assert saved["settings"]["requests"] == 3 and saved["settings"]["forget_fraction"] == 0.5
    report = (output / "report.md").read_text()
    assert "after request 3" in report and "forget_keyword_group3" in report
    assert "## Adapters" in report and "active from" in report
    assert "gold" not in saved["settings"]


def test_groups_are_disjoint_and_cover_the_forget_people(three_requests) -> None:
    metrics, _, _, _ = three_requests
    adapters = metrics["adapters"]
    assert list(adapters) == NAMES
    groups = [set(adapter["people"].split(", ")) for adapter in adapters.values()]
    assert len(groups) == 3 and all(len(group) == 1 for group in groups)
    splits = synthetic_benchmark(
        num_people=6, num_unknown=1, forget_fraction=0.5, train_images=2, heldout_images=2
    )
    assert set().union(*groups) == set(splits["forget"]["subject"])
    with pytest.raises(ValueError, match="3 forget requests need at least 3 forget people"):
        forget_groups(splits["forget"].select(range(1)), 3)


def test_each_request_is_its_own_adapter_and_all_are_composed(three_requests) -> None:
    _, model, output, config = three_requests
    assert model.active_adapters == NAMES
    assert all(not p.requires_grad for p in model.cagul_adapters.parameters())
    vlm, processor = tiny_vlm("llava", seed=config.seed, num_hidden_layers=4, hidden_size=128)
    loaded = CagulModel.from_pretrained(vlm, output / "adapters" / NAMES[0], NAMES[0])
    for name in NAMES[1:]:
        loaded.load_adapter(output / "adapters" / name, name)
    states = [loaded.cagul_adapters[name].state_dict() for name in NAMES]
    for name, state in zip(NAMES, states, strict=True):
        assert all(
            torch.equal(state[k], v) for k, v in model.cagul_adapters[name].state_dict().items()
        )
    for first in range(3):
        for second in range(first + 1, 3):
            assert any(
                not torch.equal(states[first][key], states[second][key]) for key in states[first]
            )

    splits = synthetic_benchmark(
        num_people=6, num_unknown=1, forget_fraction=0.5, train_images=2, heldout_images=2
    )
    row = splits["forget"][0]
    inputs = CagulDataCollator(processor).prompts([row["image"]], [row["question"]])
    with torch.no_grad(), model.force_gate(True), model.trace() as traces:
        model(**inputs)
    (trace,) = traces
    assert set(trace.probabilities) == set(NAMES)
    assert trace.adapter == max(NAMES, key=lambda name: trace.probabilities[name])


def test_cli_maps_requests(monkeypatch, tmp_path, capsys) -> None:
    seen = {}

    def fake_run(config, requests):
        seen["config"], seen["requests"] = config, requests
        results = {"stage 1": {"retain_keyword": 1.0, "gate_auc": None}}
        return {"results": results, "timings": {"total": 1.0}}, None

    monkeypatch.setattr("hf_cagul.continual.run_continual", fake_run)
    assert main(["demo", "--quick", "--requests", "3", "--output-dir", str(tmp_path)]) == 0
    assert seen["requests"] == 3 and seen["config"].stage1_steps == 300
    assert "stage 1" in capsys.readouterr().out
    assert main(["demo", "--requests", "2", "--ablation"]) == 2
    assert "--ablation and --compare run with one request only" in capsys.readouterr().err

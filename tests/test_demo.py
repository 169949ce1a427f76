"""The demo pipeline end to end, at a size that runs in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from run_settings import micro_demo

from hf_cagul import CagulModel
from hf_cagul.cli import main
from hf_cagul.demo import demo_targets, print_summary, run_demo
from hf_cagul.tiny import tiny_vlm


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("demo")
    config = micro_demo(output, ablation=True, attack_queries=2)
    return run_demo(config), output


def test_demo_writes_the_report(micro_run) -> None:
    metrics, output = micro_run
    for name in ("report.md", "metrics.json", "accuracy.png", "attention_heatmap.png"):
        assert (output / name).is_file(), name
    assert Image.open(output / "attention_heatmap.png").size[0] > 100
    assert json.loads((output / "metrics.json").read_text())["results"].keys() == {
        "gold",
        "base",
        "cagul",
    }
    report = (output / "report.md").read_text()
    for section in (
        "## Results",
        "## Targets",
        "## Robustness",
        "## Discriminator",
        "## Attacks on the gate",
    ):
        assert section in report
    assert (output / "attacks.png").is_file()
    assert "text-only questions (no photo)" in metrics["robustness"]


def test_demo_metrics_cover_the_suite(micro_run) -> None:
    metrics, _ = micro_run
    cagul = metrics["results"]["cagul"]
    for key in (
        "forget_keyword",
        "forget_heldout_keyword",
        "retain_keyword",
        "forget_visual_keyword",
        "forget_rougeL",
        "forget_truth_ratio",
        "forget_quality",
        "model_utility",
        "mia_auc",
    ):
        assert key in cagul, key
        assert cagul[key] is None or 0.0 <= cagul[key] <= 1.0
    gate = metrics["discriminator"]
    assert {"auc", "tpr", "fpr", "threshold", "stranger_fpr", "leak_recall"} <= set(gate)
    assert gate["stranger_photos"] == 50 * 4  # the default strangers
    assert 0.0 <= gate["stranger_fpr"] <= 1.0
    assert 0 <= gate["leaking_photos"] <= 2  # one forget person, two held-out photos
    assert math.isnan(gate["leak_recall"]) == (gate["leaking_photos"] == 0)
    assert 0 <= gate["mistaken_strangers"] <= gate["stranger_photos"]
    assert set(metrics["ablation"]) == {"lowest attention", "random", "highest attention"}
    assert len(metrics["targets"]) == 11
    attacks = metrics["attacks"]["rows"]
    assert metrics["targets"][-1]["name"] == "gate: black-box 2 queries (answer) evasion"
    assert metrics["targets"][-1]["target"] == "<= 0.05"
    assert attacks["white-box 8/255"]["max_change"] <= 8
    assert attacks["none"]["photos"] == 2  # one forget person, two held-out photos
    assert all(isinstance(target["met"], bool) for target in metrics["targets"])
    assert metrics["stage1"]["memorised"] == (
        metrics["results"]["base"]["forget_keyword"] >= metrics["stage1"]["threshold"]
    )


def test_demo_saves_a_loadable_adapter(micro_run) -> None:
    _, output = micro_run
    vlm, _ = tiny_vlm("llava", num_hidden_layers=4, hidden_size=128)
    model = CagulModel.from_pretrained(vlm, output / "adapter")
    assert model.active_config.family == "llava"


def test_cli_maps_demo_options(monkeypatch, tmp_path, capsys) -> None:
    seen = {}

    def fake_run(config):
        seen["config"] = config
        return {
            "stage1": {"memorised": False, "forget_keyword_accuracy": 0.5, "threshold": 0.9},
            "targets": [],
            "timings": {"total": 1.0},
        }

    monkeypatch.setattr("hf_cagul.demo.run_demo", fake_run)
    args = ["demo", "--quick", "--no-gold", "--people", "5", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    config = seen["config"]
    assert config.people == 5 and not config.gold and config.stage1_steps == 300
    assert "WARNING: stage 1 did not memorise" in capsys.readouterr().out


def test_summary_says_what_the_gate_lets_through(tmp_path, capsys) -> None:
    metrics = {
        "stage1": {"memorised": True, "forget_keyword_accuracy": 0.95, "threshold": 0.9},
        "targets": [],
        "timings": {"total": 1.0},
        "discriminator": {
            "auc": 0.9,
            "stranger_fpr": 0.125,
            "stranger_photos": 200,
            "leak_recall": 0.75,
            "leaking_photos": 24,
            "mistaken_strangers": 33,
            "mistaken_recall": 0.5,
            "stranger_fpr_unmistaken": 0.0125,
        },
    }
    print_summary(metrics, tmp_path)
    assert (
        "  gate: flags 12.5% of 200 strangers' photos; catches 75.0% of the 24 held-out forget "
        "photos the base model answers; the base model takes 33 strangers' photos for a forget "
        "person, and the gate flags 50.0% of them, 1.2% of the others\n"
    ) in capsys.readouterr().out
    for key in ("mistaken_strangers", "mistaken_recall", "stranger_fpr_unmistaken"):
        del metrics["discriminator"][key]
    metrics["discriminator"].update(leak_recall=float("nan"), leaking_photos=0)
    del metrics["discriminator"]["stranger_fpr"]
    print_summary(metrics, tmp_path)
    assert "  gate: catches n/a of the 0 held-out forget photos" in capsys.readouterr().out
    del metrics["discriminator"]
    print_summary(metrics, tmp_path)
    assert "gate:" not in capsys.readouterr().out


def test_summary_aligns_targets_and_says_n_a_for_nan(tmp_path, capsys) -> None:
    targets = [
        {"name": "short", "value": 0.5, "target": "<= 0.05", "met": False},
        {
            "name": "a much longer name than any before it",
            "value": float("nan"),
            "target": "<= 0.05",
            "met": False,
        },
    ]
    metrics = {
        "stage1": {"memorised": True, "forget_keyword_accuracy": 0.95, "threshold": 0.9},
        "targets": targets,
        "timings": {"total": 1.0},
    }
    print_summary(metrics, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if "target <=" in line]
    assert len(lines) == 2
    assert lines[0].index("target") == lines[1].index("target")
    assert "    n/a  target" in lines[1] and "nan" not in lines[1]


def _measured(**cagul: float) -> dict:
    base = {"forget_keyword": 1.0, "retain_keyword": 0.9, "forget_visual_keyword": 1.0}
    return {
        "results": {
            "base": base,
            "gold": {"forget_truth_ratio": 0.55},
            "cagul": {
                "forget_keyword": 0.0,
                "forget_heldout_keyword": 0.03,
                "retain_keyword": 0.89,
                "forget_visual_keyword": 1.0,
                "mia_auc": 0.5,
                "forget_truth_ratio": 0.5,
                **cagul,
            },
        },
        "discriminator": {"leak_recall": 0.96, "fpr": 0.0125, "stranger_fpr": 0.015},
    }


def test_targets_judge_held_out_photos_the_gate_and_depth() -> None:
    targets = {target["name"]: target for target in demo_targets(_measured())}
    assert all(target["met"] for target in targets.values()), targets
    assert targets["retain keyword accuracy / before"]["value"] == pytest.approx(0.89 / 0.9)
    assert targets["forget truth ratio, distance to gold"]["value"] == pytest.approx(0.05)
    assert targets["MIA AUC, forget vs unseen"]["target"] == "0.4 to 0.6"
    # Each bound bites: over-forgetting (MIA below 0.4) is missed as well as under-forgetting.
    for change, name in (
        ({"mia_auc": 0.35}, "MIA AUC, forget vs unseen"),
        ({"mia_auc": 0.65}, "MIA AUC, forget vs unseen"),
        ({"forget_truth_ratio": 0.3}, "forget truth ratio, distance to gold"),
        ({"forget_keyword": 0.03}, "forget keyword accuracy, training photos"),
        ({"retain_keyword": 0.87}, "retain keyword accuracy / before"),
    ):
        missed = [t["name"] for t in demo_targets(_measured(**change)) if not t["met"]]
        assert missed == [name], (change, missed)
    attacked = _measured()
    attacked["attacks"] = {
        "rows": {
            "white-box 8/255": {"evasion_rate": 1.0},
            "black-box 200 queries (answer)": {"evasion_rate": 0.04},
            "black-box 200 queries (gate)": {"evasion_rate": 0.5},  # an upper bound: no target
        }
    }
    targets = {target["name"]: target for target in demo_targets(attacked)}
    assert targets["gate: black-box 200 queries (answer) evasion"]["met"]
    assert len(targets) == len(demo_targets(_measured())) + 1
    attacked["attacks"]["rows"]["black-box 200 queries (answer)"]["evasion_rate"] = 0.06
    missed = [t["name"] for t in demo_targets(attacked) if not t["met"]]
    assert missed == ["gate: black-box 200 queries (answer) evasion"]
    no_gate = _measured()
    no_gate["discriminator"] = {"leak_recall": math.nan}
    missed = {t["name"] for t in demo_targets(no_gate) if not t["met"]}
    assert missed == {
        "gate: leaking photos flagged",
        "gate: FPR on held-out retain photos",
        "gate: FPR on strangers' photos",
    }

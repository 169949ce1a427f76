"""The hf-cagul command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.cli import load_vlm, main
from hf_cagul.tiny import tiny_vlm


def test_inspect_prints_the_adapter(tmp_path, capsys) -> None:
    vlm, _ = tiny_vlm("qwen2_vl")
    model = get_cagul_model(vlm, CagulConfig(num_tokens=3))
    model.save_pretrained(tmp_path / "adapter")
    assert main(["inspect", str(tmp_path / "adapter")]) == 0
    out = capsys.readouterr().out
    assert "family          : qwen2_vl (hidden size 64)" in out
    assert "3 per flagged image" in out
    assert main(["inspect", str(tmp_path / "adapter"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"] == model.get_nb_trainable_parameters()[0]
    assert data["config"]["num_tokens"] == 3


def test_inspect_reports_errors_with_exit_status_2(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "is not a CAGUL adapter" in capsys.readouterr().err


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hf_cagul.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("hf_cagul ")


def test_evaluate_a_saved_model_with_and_without_adapter(tmp_path, capsys) -> None:
    from hf_cagul.data.synthetic import synthetic_benchmark

    vlm, processor = tiny_vlm("llava")
    vlm.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    splits = synthetic_benchmark(
        num_people=2, num_unknown=1, forget_fraction=0.5, train_images=1, heldout_images=1
    )
    splits.save_to_disk(tmp_path / "bench")
    model = get_cagul_model(vlm, CagulConfig())
    model.save_pretrained(tmp_path / "adapter")

    # Saving imports DeepSpeed where it is installed, and its logger writes to stdout.
    capsys.readouterr()
    common = ["evaluate", "--model", str(tmp_path / "vlm"), "--dataset", str(tmp_path / "bench")]
    assert main([*common, "--max-rows", "4"]) == 0
    bare = json.loads(capsys.readouterr().out)
    args = [*common, "--max-rows", "4", "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--output-dir", str(tmp_path / "report")]) == 0
    adapted = json.loads(capsys.readouterr().out)
    for key in ("forget_keyword", "retain_keyword", "forget_truth_ratio", "mia_auc"):
        assert key in bare and key in adapted
    # A fresh adapter's gate is closed: every answer is the bare model's.
    assert adapted["forget_keyword"] == bare["forget_keyword"]
    assert (tmp_path / "report" / "report.md").is_file()


def test_evaluate_refuses_a_dataset_without_forget_split(tmp_path, capsys) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"a": [1]})}).save_to_disk(tmp_path / "bench")
    args = ["evaluate", "--model", "unused", "--dataset", str(tmp_path / "bench")]
    assert main(args) == 2
    assert "'forget' split" in capsys.readouterr().err


def test_device_map_is_refused_for_the_tiny_vlm_and_under_zero3(tmp_path) -> None:
    """``--device map`` places the model itself: not for the tiny VLM, nor under ZeRO-3."""
    with pytest.raises(ValueError, match="not with --tiny"):
        load_vlm(None, tiny=True, device="map")
    pytest.importorskip("deepspeed", reason="pip install deepspeed (part of hf_cagul[dev])")
    from transformers.integrations import HfDeepSpeedConfig

    # What a CagulTrainingConfig made under `accelerate launch` with a ZeRO-3 config holds.
    live = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3, which partitions"):
        load_vlm(str(tmp_path), device="map")
    del live

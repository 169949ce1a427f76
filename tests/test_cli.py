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


def test_inspect_vets_the_adapter_it_describes(tmp_path, capsys) -> None:
    # inspect reads no tensor, but an edited config is refused as from_pretrained refuses it.
    vlm, _ = tiny_vlm("qwen2_vl")
    get_cagul_model(vlm, CagulConfig(num_tokens=3)).save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "cagul_config.json"
    config = json.loads(config_file.read_text())
    config["encoder_hidden_size"] = 512
    config_file.write_text(json.dumps(config))
    assert main(["inspect", str(tmp_path / "adapter")]) == 2
    assert "encoder_hidden_size" in capsys.readouterr().err


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


def _parse(*argv: str):
    from hf_cagul.cli import build_parser
    from hf_cagul.runconfig import parse_args

    return parse_args(build_parser(), list(argv))


def test_a_new_cagul_config_field_is_a_fit_option_with_its_help(monkeypatch, capsys) -> None:
    """Fields reach ``fit`` from the dataclass alone: none is listed by the CLI."""
    from dataclasses import dataclass, field

    from hf_cagul.runconfig import build

    @dataclass
    class GrownConfig(CagulConfig):
        rewrite_strength: float = field(
            default=0.25, metadata={"help": "How hard the encoder rewrites (a new field)."}
        )

    monkeypatch.setattr("hf_cagul.cli.CagulConfig", GrownConfig)
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    # The help formatter wraps lines: compare the words.
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--rewrite-strength REWRITE_STRENGTH How hard the encoder rewrites (a new field)." in (
        help_text.replace("--rewrite_strength REWRITE_STRENGTH, ", "")
    )
    assert "(default: 0.25)" in help_text
    # Filled in at injection: never options.
    for name in ("family", "hidden_size", "num_hidden_layers", "cagul_version"):
        assert f"--{name} " not in help_text, name
    args = _parse("fit", "--rewrite-strength", "0.5", "--gate-threshold", "0.7")
    config = build(args, GrownConfig)
    assert config.rewrite_strength == 0.5 and config.gate_threshold == 0.7
    assert config.family is None and config.cagul_version == CagulConfig().cagul_version


def test_fit_sets_every_adapter_and_loss_option() -> None:
    from hf_cagul.runconfig import build
    from hf_cagul.trainer import CagulTrainingConfig

    args = _parse(
        "fit", "--output-dir", "unused", "--forget-weight", "2", "--retain_weight", "0.5",
        "--discriminator-weight", "3", "--gate-threshold", "0.7", "--query-tokens", "last",
        "--token-selection", "random", "--token-ratio", "0.25", "--attention-layer", "1",
        "--batch-size", "4", "--max_steps", "7", "--no-augment-images", "--gradient-checkpointing",
    )  # fmt: skip
    adapter = build(args, CagulConfig)
    assert (adapter.gate_threshold, adapter.query_tokens, adapter.token_selection) == (
        0.7,
        "last",
        "random",
    )
    assert (adapter.token_ratio, adapter.attention_layer) == (0.25, 1)
    training = build(args, CagulTrainingConfig, use_cpu=True)
    assert (training.forget_weight, training.retain_weight, training.discriminator_weight) == (
        2.0,
        0.5,
        3.0,
    )
    assert training.per_device_train_batch_size == 4 and training.max_steps == 7
    assert training.augment_images is False and training.gradient_checkpointing is True
    with pytest.raises(SystemExit):
        _parse("fit", "--token-selection", "sideways")


def test_fit_defaults_are_the_documented_ones() -> None:
    """What ``hf-cagul fit`` gives `CagulTrainingConfig` when no option is passed."""
    from hf_cagul.runconfig import build
    from hf_cagul.trainer import CagulTrainingConfig

    args = _parse("fit", "--output-dir", "out")
    built = build(args, CagulTrainingConfig, use_cpu=True)
    expected = CagulTrainingConfig(
        output_dir="out",
        max_steps=500,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_steps=100,
        save_total_limit=2,
        logging_steps=10,
        augment_images=True,
        seed=0,
        report_to=[],
        disable_tqdm=False,
        use_cpu=True,
    )
    assert built.to_dict() == expected.to_dict()
    assert build(args, CagulConfig) == CagulConfig()


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_the_demo_fits_its_own_gate_by_default_and_any_gate_on_request(command) -> None:
    from hf_cagul.cli import _demo_config, build_parser
    from hf_cagul.demo import DEMO_GATE, DemoConfig, cagul_fit_settings

    parser = build_parser()
    config = _demo_config(parser.parse_args([command]))
    assert config.adapter.gate == DEMO_GATE == DemoConfig().adapter.gate
    assert (config.gate_fit, config.gate_target_fpr) == ("apart", 0.02)
    assert config.depth_weight == DemoConfig().depth_weight
    assert config.gate_every_question is True
    assert cagul_fit_settings(config).training_arguments("out")["gate_every_question"] is True
    off = _demo_config(parser.parse_args([command, "--no-gate-every-question"]))
    assert cagul_fit_settings(off).training_arguments("out")["gate_every_question"] is False
    assert cagul_fit_settings(config).training_arguments("out")["gate_kept_as_negatives"] is False
    kept = _demo_config(parser.parse_args([command, "--gate-kept-as-negatives"]))
    assert cagul_fit_settings(kept).training_arguments("out")["gate_kept_as_negatives"] is True
    chosen = parser.parse_args([command, "--gate", "visual_tokens", "--gate-fit", "joint"])
    assert (_demo_config(chosen).adapter.gate, _demo_config(chosen).gate_fit) == (
        "visual_tokens",
        "joint",
    )
    # The library's own default is still the paper's gate.
    assert CagulConfig().gate == "visual_tokens"

"""hf-cagul fit / evaluate --benchmark / push, and --config run files."""

from __future__ import annotations

import json
import shutil

import pytest
from benchmark_fixtures import write_mllmu
from safetensors.torch import load_file

from hf_cagul.cli import main
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.trainer.cagul_config import TRAINING_CONFIG_NAME

TINY_FIT = ["fit", "--tiny", "--benchmark", "synthetic", "--batch-size", "4", "--save-steps", "1"]


def _state(checkpoint) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def test_fit_writes_checkpoints_and_the_adapter(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    options = ["--gate-threshold", "0.7", "--query-tokens", "last", "--forget-weight", "2"]
    assert main([*TINY_FIT, *options, "--output-dir", str(out), "--max-steps", "2"]) == 0
    assert "Adapter written to" in capsys.readouterr().out
    assert {p.name for p in (out / "adapter").iterdir()} >= {CONFIG_NAME, WEIGHTS_NAME}
    saved = json.loads((out / "adapter" / CONFIG_NAME).read_text())
    assert (saved["gate_threshold"], saved["query_tokens"]) == (0.7, "last")
    training = json.loads((out / "adapter" / TRAINING_CONFIG_NAME).read_text())
    assert training["forget_weight"] == 2 and training["per_device_train_batch_size"] == 4
    assert _state(out / "checkpoint-2")["global_step"] == 2
    # A second run into the same directory must say --resume, not overwrite silently.
    assert main([*TINY_FIT, "--output-dir", str(out), "--max-steps", "3"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_fit_resume_reaches_the_uninterrupted_adapter(tmp_path, capsys) -> None:
    # The augmentation stream is not part of a checkpoint: compare without it.
    fit = [*TINY_FIT, "--max-steps", "3", "--no-augment-images", "--save-total-limit", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*fit, "--output-dir", str(straight)]) == 0
    # A run killed after its second checkpoint leaves what `straight` had at that point.
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    assert main([*fit, "--output-dir", str(resumed), "--resume"]) == 0
    assert f"Resuming from {resumed / 'checkpoint-2'}" in capsys.readouterr().out
    assert _state(resumed / "checkpoint-3")["global_step"] == 3
    expected = load_file(straight / "adapter" / WEIGHTS_NAME)
    got = load_file(resumed / "adapter" / WEIGHTS_NAME)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].allclose(tensor, atol=1e-6), name
    assert not got["discriminator.head.bias"].allclose(
        load_file(resumed / "checkpoint-2" / WEIGHTS_NAME)["discriminator.head.bias"]
    )


def test_config_file_sets_options_and_the_command_line_wins(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    run = tmp_path / "run.yaml"
    run.write_text(
        f"tiny: true\nbenchmark: synthetic\nmax_rows: 4\n"
        f"fit:\n  output-dir: {out}\n  max_steps: 3\n  batch_size: 4\n  save_steps: 1\n"
    )
    assert main(["fit", "--config", str(run), "--max-steps", "1"]) == 0
    assert _state(out / "checkpoint-1")["global_step"] == 1
    assert not (out / "checkpoint-2").exists()

    run.write_text("tiny: true\nfit:\n  max_rows: 4\n")
    assert main(["fit", "--config", str(run)]) == 2
    assert "`hf-cagul fit` has no option 'max_rows'" in capsys.readouterr().err
    run.write_text("tiny: true\nmax_stepz: 4\n")
    assert main(["fit", "--config", str(run)]) == 2
    assert "unknown option 'max_stepz'" in capsys.readouterr().err
    run.write_text("benchmark: tofu\n")
    assert main(["fit", "--config", str(run)]) == 2
    assert "benchmark='tofu' is not one of fiubench" in capsys.readouterr().err
    run.write_text("tiny: true\n")
    assert main(["fit", "--config", str(run), "--benchmark", "synthetic"]) == 2
    assert "--output-dir required" in capsys.readouterr().err


def test_evaluate_a_converted_benchmark_with_the_fitted_adapter(tmp_path, capsys) -> None:
    data = write_mllmu(tmp_path / "mllmu")
    out = tmp_path / "run"
    fit = ["fit", "--tiny", "--benchmark", "mllmu", "--data", str(data), "--max-steps", "1"]
    assert main([*fit, "--output-dir", str(out), "--batch-size", "2"]) == 0
    capsys.readouterr()
    args = ["evaluate", "--tiny", "--benchmark", "mllmu", "--data", str(data), "--max-rows", "4"]
    assert main([*args, "--adapter", str(out / "adapter")]) == 0
    results = json.loads(capsys.readouterr().out)
    for key in ("forget_multiple_choice_accuracy", "retain_fill_blank_accuracy", "forget_keyword"):
        assert 0.0 <= results[key] <= 1.0
    assert main(["evaluate", "--tiny"]) == 2
    assert "Pass --benchmark" in capsys.readouterr().err


def test_evaluate_attacks_the_gate_and_reports_it(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*TINY_FIT, "--output-dir", str(out), "--max-steps", "1"]) == 0
    capsys.readouterr()
    args = ["evaluate", "--tiny", "--benchmark", "synthetic", "--max-rows", "2", "--attacks"]
    attack = ["--attack-queries", "2", "--attack-steps", "1", "--output-dir", str(tmp_path / "r")]
    assert main([*args, *attack, "--adapter", str(out / "adapter")]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["attacks"]["rows"]
    assert rows["white-box 8/255"]["max_change"] <= 8 and rows["none"]["photos"] == 2
    assert "black-box 2 queries (answer)" in rows and "forget_keyword" in report["results"]["cagul"]
    assert "## Attacks on the gate" in (tmp_path / "r" / "report.md").read_text()
    assert main(args) == 2
    assert "--attacks attacks an adapter's gate: pass --adapter" in capsys.readouterr().err


def test_push_uploads_an_adapter_directory_to_the_hub(tmp_path, fake_hub, capsys) -> None:
    out = tmp_path / "run"
    assert main([*TINY_FIT, "--output-dir", str(out), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["push", str(out / "adapter"), "test-user/forget-adapter"]) == 0
    assert "test-user/forget-adapter" in capsys.readouterr().out
    files = fake_hub.files("test-user/forget-adapter")
    assert {CONFIG_NAME, WEIGHTS_NAME, "README.md"} <= set(files)
    assert files[WEIGHTS_NAME] == (out / "adapter" / WEIGHTS_NAME).read_bytes()
    assert main(["push", str(tmp_path / "nowhere"), "test-user/x"]) == 2
    assert "is not a local adapter directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "test-user/x"]) == 2
    assert "is not a CAGUL adapter" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_run_file_sections_for_other_commands_are_skipped(tmp_path, command, capsys) -> None:
    from hf_cagul.cli import build_parser
    from hf_cagul.runconfig import command_options, load_run_config, subcommands

    run = tmp_path / "run.json"
    run.write_text(json.dumps({"benchmark": "clear", "fit": {"max_steps": 7}, "evaluate": {}}))
    commands = subcommands(build_parser())
    values = command_options(load_run_config(run), command, commands)
    assert values == (
        {"benchmark": "clear", "max_steps": 7} if command == "fit" else {"benchmark": "clear"}
    )


def _parse(*argv: str):
    from hf_cagul.cli import build_parser
    from hf_cagul.runconfig import parse_args

    return parse_args(build_parser(), list(argv))


def test_run_file_keys_are_fields_or_their_aliases(tmp_path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(
        "batch_size: 4\nreport-to: [tensorboard]\n"
        "fit:\n  forget_weight: 2\n  gate-threshold: 0.7\n  per_device_train_batch_size: 2\n"
    )
    fit = _parse("fit", "--config", str(run))
    assert fit.per_device_train_batch_size == 2  # the section wins over the top level
    assert fit.report_to == ["tensorboard"] and fit.forget_weight == 2
    assert fit.gate_threshold == 0.7
    assert _parse("compare", "--config", str(run)).batch_size == 4  # compare's own option
    run.write_text("compare:\n  methods: npo\nfit:\n  learning_rate: 5e-4\n")
    assert _parse("compare", "--config", str(run)).methods == ["npo"]
    assert _parse("fit", "--config", str(run)).learning_rate == 5e-4  # YAML reads a string
    assert _parse("fit", "--report-to", "tensorboard", "wandb").report_to == [
        "tensorboard",
        "wandb",
    ]
    run.write_text("fit:\n  max_stepz: 4\n")
    with pytest.raises(ValueError, match="has no option 'max_stepz' \\(did you mean max_steps"):
        _parse("fit", "--config", str(run))
    run.write_text("fit:\n  family: llava\n")  # filled in at injection, never an option
    with pytest.raises(ValueError, match="has no option 'family'"):
        _parse("fit", "--config", str(run))


def test_the_quick_preset_sits_below_the_run_file_and_the_command_line(tmp_path) -> None:
    from hf_cagul.demo import QUICK_PRESET, DemoConfig

    run = tmp_path / "run.yaml"
    run.write_text("people: 6\ndemo:\n  cagul_steps: 50\n  quick: true\n")
    args = _parse("demo", "--config", str(run), "--cagul-steps", "70")
    assert args.people == 6 and args.cagul_steps == 70
    assert args.stage1_steps == QUICK_PRESET["stage1_steps"]  # the file turned it on
    args = _parse("demo", "--config", str(run), "--quick", "false")
    assert args.stage1_steps == DemoConfig().stage1_steps and args.people == 6

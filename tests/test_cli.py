"""The hf-cagul command."""

from __future__ import annotations

import json
import subprocess
import sys

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.cli import main
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

"""Every example runs with --tiny (offline, CPU); serving through pipeline() uses the adapter."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_fixtures import write_fiubench
from PIL import Image
from transformers import pipeline

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.cli import main
from hf_cagul.data import CagulDataCollator
from hf_cagul.tiny import tiny_vlm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_examples_are_short() -> None:
    for path in EXAMPLES.glob("*.py"):
        if path.name != "quickstart.py":
            assert len(path.read_text().splitlines()) < 80, path.name


def test_fit_then_publish_then_serve_and_evaluate(tmp_path, monkeypatch, fake_hub, capsys) -> None:
    data = write_fiubench(tmp_path / "FIUBench")
    out = tmp_path / "run"
    run_example(
        "fit_fiubench.py", monkeypatch, "--tiny", "--data", str(data),
        "--output-dir", str(out), "--max-steps", "2",
    )  # fmt: skip
    assert (out / "adapter" / "cagul_adapter.safetensors").is_file()
    assert (out / "checkpoint-2").is_dir()
    assert main(["push", str(out / "adapter"), "test-user/tiny-forget"]) == 0
    capsys.readouterr()

    run_example("serve_pipeline.py", monkeypatch, "--tiny", "--adapter", "test-user/tiny-forget")
    served = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert served["answer"].strip()
    assert 0.0 <= served["gate"]["probability"] <= 1.0

    run_example(
        "evaluate_published.py", monkeypatch, "--tiny", "--adapter", "test-user/tiny-forget",
        "--benchmark", "fiubench", "--data", str(data), "--forget-split", "forget10",
        "--max-rows", "2",
    )  # fmt: skip
    table = capsys.readouterr().out
    assert "adapter test-user/tiny-forget: llava" in table
    assert "forget_keyword" in table and "retain_truth_ratio" in table


def test_pipeline_on_the_hooked_vlm_answers_as_the_adapted_model() -> None:
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig()).eval()
    with torch.no_grad():  # a rewriting encoder, so adapted answers differ from the base's
        for parameter in model.active_adapter_module.parameters():
            parameter.normal_(0, 0.5)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    question = "who is this person ?"
    serve = pipeline("image-text-to-text", model=model.base_model, processor=processor)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
        }
    ]

    def served() -> str:
        out = serve(text=messages, max_new_tokens=6, generate_kwargs={"do_sample": False})
        return out[0]["generated_text"][-1]["content"].strip()

    def generated() -> str:
        inputs = CagulDataCollator(processor).prompts([image], [question])
        tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new = tokens[0, inputs["input_ids"].shape[1] :]
        return processor.tokenizer.decode(new, skip_special_tokens=True).strip()

    with model.force_gate(True), model.trace() as traces:
        adapted = served()
    assert traces and traces[0].flagged
    with model.force_gate(True):
        assert adapted == generated()
    with model.disable_adapter():
        base = served()
    assert base != adapted


def test_multi_process_fit_as_in_fit_multi_gpu(tmp_path) -> None:
    """examples/fit_multi_gpu.md's command, with torchrun and 2 CPU processes (gloo)."""
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hf_cagul.cli", "fit", "--tiny", "--benchmark", "synthetic",
        "--max-steps", "2", "--batch-size", "2", "--save-steps", "2",
        "--output-dir", str(output),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Adapter written") == 1  # the main process alone writes it
    vlm, _ = tiny_vlm("llava", seed=0)
    loaded = CagulModel.from_pretrained(vlm, output / "adapter")
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference
    assert (output / "checkpoint-2" / "trainer_state.json").is_file()

"""CagulTrainer under DDP (two CPU processes, gloo), and the trainer's distributed guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_fit import LOG_NAME, fit
from fsdp_step import adapter_gradients
from safetensors.torch import load_file
from test_trainer import make_trainer, training_args

from hf_cagul import CagulTrainingConfig
from hf_cagul.config import WEIGHTS_NAME

TESTS = Path(__file__).resolve().parent
LOSS_KEYS = ("loss", "forget_loss", "retain_kl", "discriminator_loss")


def test_two_ddp_processes_fit_the_adapter_of_one_process_with_the_whole_batch(
    tmp_path: Path,
) -> None:
    """Half the per-device batch on each of 2 processes == the whole batch on 1 process.

    Micro-batches of the two processes hold different numbers of forget tokens, retain tokens
    and forget images (balanced sampling with replacement), so each loss term must be
    normalised by the counts of the whole batch, not by each process's own: normalising
    locally moves the adapter by ~1e-3 after three steps, far outside this tolerance.
    """
    launch_two("ddp_fit.py", str(tmp_path / "two"), "--per-device-batch", "2", "--steps", "3")
    fit(tmp_path / "one", per_device_batch=4, steps=3)

    two = load_file(tmp_path / "two" / "adapter" / WEIGHTS_NAME)
    one = load_file(tmp_path / "one" / "adapter" / WEIGHTS_NAME)
    assert two.keys() == one.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=2e-5, rtol=0, msg=name)
    initial = make_trainer(tmp_path / "initial")[1].active_adapter_module.state_dict()
    assert any(not torch.equal(initial[name], one[name]) for name in one)

    # Logged terms are the whole batch's means, on every process count.
    logs_two = json.loads((tmp_path / "two" / LOG_NAME).read_text())
    logs_one = json.loads((tmp_path / "one" / LOG_NAME).read_text())
    steps_two = [entry for entry in logs_two if "forget_loss" in entry]
    steps_one = [entry for entry in logs_one if "forget_loss" in entry]
    assert len(steps_two) == len(steps_one) == 3
    for entry_two, entry_one in zip(steps_two, steps_one, strict=True):
        for key in LOSS_KEYS:
            assert entry_two[key] == pytest.approx(entry_one[key], rel=1e-5, abs=1e-6), key


def launch_two(script: str, *arguments: str) -> None:
    """Run ``tests/<script>`` as ``torchrun --standalone --nproc_per_node 2`` (CPU, gloo)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(TESTS / script), *arguments]
    launched = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]


def test_fsdp2_sharded_vlm_gives_the_adapter_gradients_of_one_process(tmp_path: Path) -> None:
    """FSDP2 (``fully_shard`` per decoder / vision layer + root) on 2 CPU processes.

    The hooks, the truncated attention pass (which stops inside a sharded layer), the base pass
    under ``disable_adapter`` and the globally normalised loss all run on the sharded model;
    the adapter's gradients equal those of one unsharded process on the whole batch.
    """
    launch_two("fsdp_step.py", str(tmp_path / "two.safetensors"))
    adapter_gradients(tmp_path / "one.safetensors")
    two = load_file(tmp_path / "two.safetensors")
    one = load_file(tmp_path / "one.safetensors")
    assert two.keys() == one.keys()
    for name, gradient in one.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(two[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_find_unused_parameters_is_refused(tmp_path: Path) -> None:
    assert training_args(tmp_path).ddp_find_unused_parameters is False
    with pytest.raises(ValueError, match="Leave it False"):
        training_args(tmp_path, ddp_find_unused_parameters=True)


def test_data_parallel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several GPUs in one process mean nn.DataParallel: refused, naming torchrun."""
    monkeypatch.setattr(CagulTrainingConfig, "n_gpu", property(lambda self: 2))
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        make_trainer(tmp_path)


def test_save_takes_the_adapter_from_a_gathered_state_dict(tmp_path: Path) -> None:
    """Under FSDP / ZeRO-3, Trainer gathers the whole state dict and hands it to ``_save``."""
    trainer, model = make_trainer(tmp_path)
    gathered = {f"module.{name}": tensor + 1 for name, tensor in model.state_dict().items()}
    trainer._save(str(tmp_path / "saved"), state_dict=gathered)
    saved = load_file(tmp_path / "saved" / WEIGHTS_NAME)
    adapter = model.active_adapter_module.state_dict()
    assert saved.keys() == adapter.keys()
    for name, tensor in adapter.items():
        assert torch.equal(saved[name], tensor + 1)

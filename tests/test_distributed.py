"""CagulTrainer under DDP, FSDP2 and DeepSpeed ZeRO-3, the baselines under DDP (two CPU
processes, gloo), and the trainer's distributed guards."""

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
from hf_cagul.tiny import tiny_vlm

TESTS = Path(__file__).resolve().parent
ZERO3_CONFIG = TESTS.parent / "examples" / "accelerate_deepspeed_zero3.yaml"
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
LOSS_KEYS = ("loss", "forget_loss", "retain_kl", "discriminator_loss")
BASELINE_LOSS_KEYS = ("loss", "forget_loss", "retain_loss")
LORA_WEIGHTS = "adapter_model.safetensors"
"""What PEFT writes the fitted LoRA weights to."""


@pytest.fixture(scope="module")
def one_process_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, the whole batch (per-device batch 4), 3 steps."""
    output = tmp_path_factory.mktemp("one")
    fit(output, per_device_batch=4, steps=3)
    return output


def test_two_ddp_processes_fit_the_adapter_of_one_process_with_the_whole_batch(
    tmp_path: Path, one_process_fit: Path
) -> None:
    """Half the per-device batch on each of 2 processes == the whole batch on 1 process.

    Micro-batches of the two processes hold different numbers of forget tokens, retain tokens
    and forget images (balanced sampling with replacement), so each loss term must be
    normalised by the counts of the whole batch, not by each process's own: normalising
    locally moves the adapter by ~1e-3 after three steps, far outside this tolerance.
    """
    launch_two(TORCHRUN, "ddp_fit.py", str(tmp_path), "--per-device-batch", "2", "--steps", "3")
    assert_same_fit(tmp_path, one_process_fit, atol=2e-5)
    initial = make_trainer(tmp_path / "initial")[1].active_adapter_module.state_dict()
    one = load_file(one_process_fit / "adapter" / WEIGHTS_NAME)
    assert any(not torch.equal(initial[name], one[name]) for name in one)


@pytest.mark.parametrize("method", ["npo", "kl", "idkpo"])
def test_baselines_under_two_ddp_processes_fit_the_lora_of_one_process(
    tmp_path: Path, method: str
) -> None:
    """The baselines normalise their terms as CAGUL does: per row (NPO, DPO, NLL) or per token
    (KL) over the whole batch of all processes, so half the batch on each of 2 processes fits
    the LoRA weights of 1 process with the whole batch.

    Balanced sampling gives the two micro-batches different numbers of forget and retain rows,
    some none at all (where the reference and refusal passes still run, weighing nothing).
    Measured: 4e-6 at most (NPO; KL 2e-8); per-process means instead move the LoRA weights by
    6e-4 (KL) to 2e-2 (NPO, IdkPO) after three steps.
    """
    fit(tmp_path / "one", per_device_batch=4, steps=3, method=method)
    arguments = ("--per-device-batch", "2", "--steps", "3", "--method", method)
    launch_two(TORCHRUN, "ddp_fit.py", str(tmp_path / "two"), *arguments)
    assert_same_fit(tmp_path / "two", tmp_path / "one", 2e-5, LORA_WEIGHTS, BASELINE_LOSS_KEYS)
    one = load_file(tmp_path / "one" / "adapter" / LORA_WEIGHTS)
    assert any(bool(tensor.abs().max() > 0) for name, tensor in one.items() if "lora_B" in name)


@pytest.mark.parametrize("depth_loss", ["npo", "unlikelihood"])
def test_the_depth_term_under_two_ddp_processes_fits_the_adapter_of_one_process(
    tmp_path: Path, depth_loss: str
) -> None:
    """The depth term is normalised over the whole batch (per forget row for NPO, per
    true-answer token for unlikelihood), and a process whose micro-batch holds no forget row
    still runs its forwards (weighing nothing): half the batch on each of 2 processes fits the
    adapter of 1 process with the whole batch."""
    depth = ("--depth-weight", "1.0", "--depth-loss", depth_loss)
    fit(tmp_path / "one", per_device_batch=4, steps=3, depth_weight=1.0, depth_loss=depth_loss)
    arguments = ("--per-device-batch", "2", "--steps", "3", *depth)
    launch_two(TORCHRUN, "ddp_fit.py", str(tmp_path / "two"), *arguments)
    assert_same_fit(tmp_path / "two", tmp_path / "one", 2e-5, loss_keys=(*LOSS_KEYS, "depth_loss"))


def test_deepspeed_zero3_fits_the_adapter_of_one_process_with_the_whole_batch(
    tmp_path: Path, one_process_fit: Path
) -> None:
    """``accelerate launch`` with ``examples/accelerate_deepspeed_zero3.yaml`` on 2 CPU processes.

    ``from_pretrained`` partitions the VLM as it loads (``zero3_init_flag``; ``ddp_fit.py``
    checks every tensor is partitioned), the adapter is partitioned too and gathered by
    DeepSpeed around each of its modules, the attention pass stops inside a partitioned layer,
    and the adapter-only save gathers the 16-bit weights: the fit equals the one-process fit.
    Measured: 1.5e-5 at most on one day, 9.5e-5 on another with the same code (DeepSpeed's
    partitioned gradient reduction and clipping sum in another order than DDP's, which Adam's
    first steps amplify, and the order depends on the environment); locally normalised losses
    would move the adapter by ~1e-3, still 5x the tolerance.
    """
    pytest.importorskip("deepspeed", reason="pip install deepspeed (part of hf_cagul[dev])")
    vlm, _ = tiny_vlm("llava")
    vlm.save_pretrained(tmp_path / "vlm")
    launcher = (
        "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CONFIG),
        "--mixed_precision", "no", "--num_processes", "2",
    )  # fmt: skip
    arguments = ("--per-device-batch", "2", "--steps", "3", "--deepspeed", str(tmp_path / "vlm"))
    launch_two(launcher, "ddp_fit.py", str(tmp_path / "two"), *arguments)
    assert_same_fit(tmp_path / "two", one_process_fit, atol=2e-4)
    assert not list((tmp_path / "two" / "adapter").glob("*.bin"))  # adapter only, safetensors


def assert_same_fit(
    two: Path,
    one: Path,
    atol: float,
    weights: str = WEIGHTS_NAME,
    loss_keys: tuple[str, ...] = LOSS_KEYS,
) -> None:
    """The adapters (``weights`` files) match to ``atol``; the logged ``loss_keys`` (whole-batch
    means) to 1e-5."""
    fitted = load_file(two / "adapter" / weights)
    reference = load_file(one / "adapter" / weights)
    assert fitted.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(fitted[name], tensor, atol=atol, rtol=0, msg=name)
    logs_two = json.loads((two / LOG_NAME).read_text())
    logs_one = json.loads((one / LOG_NAME).read_text())
    steps_two = [entry for entry in logs_two if "forget_loss" in entry]
    steps_one = [entry for entry in logs_one if "forget_loss" in entry]
    assert len(steps_two) == len(steps_one) == 3
    for entry_two, entry_one in zip(steps_two, steps_one, strict=True):
        for key in loss_keys:
            assert entry_two[key] == pytest.approx(entry_one[key], rel=1e-5, abs=1e-6), key


def launch_two(launcher: tuple[str, ...], script: str, *arguments: str) -> None:
    """Run ``tests/<script>`` with ``python <launcher>`` (2 CPU processes, gloo)."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",  # DeepSpeed's, when it is the launcher
    }
    command = [sys.executable, *launcher, str(TESTS / script), *arguments]
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
    launch_two(TORCHRUN, "fsdp_step.py", str(tmp_path / "two.safetensors"))
    adapter_gradients(tmp_path / "one.safetensors")
    two = load_file(tmp_path / "two.safetensors")
    one = load_file(tmp_path / "one.safetensors")
    assert two.keys() == one.keys()
    for name, gradient in one.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(two[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_ddp_unused_parameter_search_finds_the_gate_in_the_output(
    tmp_path: Path, one_process_fit: Path
) -> None:
    """``ddp_find_unused_parameters=True`` walks the graph from the output: the gate's loss
    reaches it through ``gate_logits``, so the fit is the one-process fit still."""
    assert training_args(tmp_path).ddp_find_unused_parameters is False
    arguments = ("--per-device-batch", "2", "--steps", "3", "--find-unused-parameters")
    launch_two(TORCHRUN, "ddp_fit.py", str(tmp_path), *arguments)
    assert_same_fit(tmp_path, one_process_fit, atol=2e-5)


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

"""The checks that need a CUDA GPU, in one run (a few minutes on one H100), tiny models only.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/gpu_checks.py [--output-dir DIR]

Every model is built offline by `hf_cagul.tiny`. Checks, each reported PASS / FAIL / SKIP:

1. ``closed-gate``: on the GPU in float32 and bfloat16, a fresh adapter (gate closed) gives
   logits bit-identical to the bare VLM's, and a forced-open gate changes them;
2. ``fit-bf16``: `CagulTrainer` fits a few steps in bf16 on the GPU; the VLM is unchanged;
3. ``device-map``: the VLM loaded with ``device_map="auto"`` and a ``max_memory`` that sends
   part of it to the CPU: closed gate bit-identical, open gate changes the logits;
4. ``fsdp``: ``accelerate launch --config_file examples/accelerate_fsdp.yaml`` (FSDP2, one
   process per visible GPU) fits a few steps and saves an adapter-only checkpoint;
5. ``deepspeed-zero3``: the same with ``examples/accelerate_deepspeed_zero3.yaml`` (needs
   DeepSpeed);
6. ``bnb-4bit`` / ``bnb-8bit``: the VLM quantized by bitsandbytes: closed gate bit-identical to
   the quantized VLM, open gate changes the logits, and a 2-step fit moves the adapter (needs
   bitsandbytes).

Without CUDA it says so and exits 0. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402

from hf_cagul import (  # noqa: E402
    CagulConfig,
    CagulModel,
    CagulTrainer,
    CagulTrainingConfig,
    get_cagul_model,
)
from hf_cagul.config import WEIGHTS_NAME  # noqa: E402
from hf_cagul.tiny import TINY_IMAGE_PLACEHOLDER, tiny_vlm  # noqa: E402

FAMILY = "llava"
SUBPROCESS_TIMEOUT_S = 240


class Skip(Exception):
    """A check that cannot run here (a missing package); the message says which."""


def image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def dataset(rows_per_split: int = 4) -> Dataset:
    """Forget rows about one person, retain rows about another."""
    rows = [
        (split, name, seed + index % 2)
        for index in range(rows_per_split)
        for split, name, seed in (("forget", "anna smith", 10), ("retain", "ben jones", 20))
    ]
    return Dataset.from_dict(
        {
            "image": [image(seed) for _, _, seed in rows],
            "question": ["what is the name of this person ?"] * len(rows),
            "answer": [f"this is {name} ." for _, name, _ in rows],
            "split": [split for split, _, _ in rows],
        }
    )


def probe_inputs(processor: Any, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Two prompts with one image each, on ``device``."""
    text = f"{TINY_IMAGE_PLACEHOLDER[FAMILY]} what is the name of this person ?"
    inputs = processor(images=[image(1), image(2)], text=[text, text], return_tensors="pt")
    return {key: value.to(device) for key, value in inputs.items()}


def training_config(output_dir: Path, **overrides: Any) -> CagulTrainingConfig:
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "disable_tqdm": True,
        "bf16": True,
    }
    values.update(overrides)
    return CagulTrainingConfig(**values)


def adapter_with_random_encoder(vlm: Any) -> CagulModel:
    """A fresh adapter (gate closed) whose encoder visibly rewrites tokens when flagged."""
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig())
    last = model.active_adapter_module.encoder.mlp[-1]
    with torch.no_grad():
        for parameter in last.parameters():
            parameter.normal_()
    return model


def gate_invariants(vlm: Any, inputs: dict[str, torch.Tensor]) -> CagulModel:
    """Closed gate: bit-identical logits; forced-open gate: different logits."""
    with torch.no_grad():
        bare = vlm(**inputs).logits
        model = adapter_with_random_encoder(vlm)
        closed = model(**inputs).logits
        with model.force_gate(True):
            flagged = model(**inputs).logits
    if not torch.equal(closed, bare):
        raise AssertionError(f"closed gate changed the logits by {(closed - bare).abs().max()}")
    if torch.equal(flagged, bare):
        raise AssertionError("an open gate left the logits unchanged")
    return model


def fit_moves_adapter_only(model: CagulModel, processor: Any, output_dir: Path) -> str:
    """Fit a few steps; the adapter moves, the VLM does not. Returns the last logged loss."""
    vlm_before = {k: v.detach().clone() for k, v in model.base_model.state_dict().items()}
    adapter_before = {
        k: v.detach().clone() for k, v in model.active_adapter_module.state_dict().items()
    }
    trainer = CagulTrainer(
        model=model,
        args=training_config(output_dir),
        train_dataset=dataset(),
        processing_class=processor,
    )
    trainer.train()
    changed = [
        k for k, v in model.base_model.state_dict().items() if not torch.equal(v, vlm_before[k])
    ]
    if changed:
        raise AssertionError(f"VLM tensors changed: {changed[:3]}")
    after = model.active_adapter_module.state_dict()
    if all(torch.equal(after[k], adapter_before[k]) for k in after):
        raise AssertionError("the adapter did not move")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if not losses or not all(np.isfinite(losses)):
        raise AssertionError(f"losses not finite: {losses}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# ---------------------------------------------------------------------------- the checks


def check_closed_gate(work: Path) -> str:
    for dtype in (torch.float32, torch.bfloat16):
        vlm, processor = tiny_vlm(FAMILY)
        vlm = vlm.to("cuda", dtype)
        model = gate_invariants(vlm, probe_inputs(processor, "cuda"))
        model.unload()
    return "float32 and bfloat16 on cuda"


def check_fit_bf16(work: Path) -> str:
    vlm, processor = tiny_vlm(FAMILY)
    model = get_cagul_model(vlm.to("cuda"), CagulConfig())
    return fit_moves_adapter_only(model, processor, work / "fit-bf16")


def saved_tiny_vlm(work: Path) -> tuple[Path, Any]:
    directory = work / "tiny-vlm"
    vlm, processor = tiny_vlm(FAMILY)
    if not directory.exists():
        vlm.save_pretrained(directory)
    return directory, processor


def check_device_map(work: Path) -> str:
    from transformers import AutoModelForImageTextToText

    directory, processor = saved_tiny_vlm(work)
    size = sum(p.numel() * p.element_size() for p in tiny_vlm(FAMILY)[0].parameters())
    vlm = AutoModelForImageTextToText.from_pretrained(
        directory,
        device_map="auto",
        max_memory={0: size // 2, "cpu": 4 * size},
        offload_folder=str(work / "offload"),
    )
    devices = sorted({str(device) for device in vlm.hf_device_map.values()})
    if len(devices) < 2:
        raise AssertionError(f"device_map='auto' kept everything on {devices}")
    model = gate_invariants(vlm, probe_inputs(processor, "cuda"))
    adapter_device = next(model.active_adapter_module.parameters()).device
    return f"devices {devices}, adapter on {adapter_device}"


def accelerate_launch(config: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --config_file examples/<config>`` one process per GPU; must exit 0."""
    if importlib.util.find_spec("accelerate") is None:
        raise Skip("accelerate is not installed")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "examples" / config),
        "--num_processes", str(torch.cuda.device_count()),
        *arguments,
    ]  # fmt: skip
    # The launched processes import this checkout first, then whatever the parent could import.
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}
    launched = subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    if launched.returncode != 0:
        raise AssertionError(f"exit {launched.returncode}:\n{launched.stderr[-2500:]}")
    return launched


def load_saved_adapter(directory: Path) -> tuple[list[str], CagulModel]:
    """The files of an adapter-only save in ``directory``, and the adapter loaded on the tiny
    VLM (so its tensors are whole, of the right shapes)."""
    files = sorted(path.name for path in directory.iterdir())
    if WEIGHTS_NAME not in files or any(name.endswith((".bin", ".pt")) for name in files):
        raise AssertionError(f"unexpected checkpoint files: {files}")
    return files, CagulModel.from_pretrained(tiny_vlm(FAMILY)[0], directory)


def launch_worker(config: str, work: Path, name: str) -> str:
    """``accelerate launch`` this script's worker with ``config``, one process per GPU."""
    output = work / name
    accelerate_launch(config, str(Path(__file__).resolve()), "--worker", str(output))
    files, loaded = load_saved_adapter(output / "adapter")
    torch.manual_seed(0)  # the worker's initial adapter
    fresh = get_cagul_model(tiny_vlm(FAMILY)[0], CagulConfig()).active_adapter_module
    moved = any(
        not torch.equal(tensor.float(), fresh.state_dict()[key].float())
        for key, tensor in loaded.active_adapter_module.state_dict().items()
    )
    if not moved:
        raise AssertionError("the saved adapter is the initial one")
    return f"{torch.cuda.device_count()} process(es), saved {files}"


def check_fsdp(work: Path) -> str:
    return launch_worker("accelerate_fsdp.yaml", work, "fsdp")


def check_deepspeed(work: Path) -> str:
    """The worker, then ``hf-cagul fit`` (config before model, adapter gathered to save)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("deepspeed is not installed")
    worker = launch_worker("accelerate_deepspeed_zero3.yaml", work, "deepspeed")
    output = work / "deepspeed-cli"
    fit = [
        "--tiny",
        "--benchmark",
        "synthetic",
        "--max-steps",
        "3",
        "--per-device-train-batch-size",
        "2",
    ]
    launched = accelerate_launch(
        "accelerate_deepspeed_zero3.yaml",
        *("-m", "hf_cagul.cli", "fit", *fit, "--save-steps", "3", "--bf16"),
        *("--output-dir", str(output)),
    )
    if launched.stdout.count("Adapter written") != 1:
        raise AssertionError(f"hf-cagul fit did not report one save:\n{launched.stdout[-1500:]}")
    return f"{worker}; hf-cagul fit saved {load_saved_adapter(output / 'adapter')[0]}"


def check_bitsandbytes(bits: int) -> Callable[[Path], str]:
    def check(work: Path) -> str:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise Skip("bitsandbytes is not installed")
        from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

        directory, processor = saved_tiny_vlm(work)
        quantization = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
            if bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        vlm = AutoModelForImageTextToText.from_pretrained(
            directory, quantization_config=quantization, device_map={"": 0}
        )
        model = gate_invariants(vlm, probe_inputs(processor, "cuda"))
        return fit_moves_adapter_only(model, processor, work / f"bnb-{bits}bit")

    return check


def worker(output: Path) -> None:
    """Run under ``accelerate launch``: fit a few steps and save the adapter."""
    # The training config first: under ZeRO-3 it must exist before the VLM is built.
    args = training_config(output / "out", per_device_train_batch_size=2)
    vlm, processor = tiny_vlm(FAMILY)
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig())
    trainer = CagulTrainer(
        model=model, args=args, train_dataset=dataset(), processing_class=processor
    )
    trainer.train()
    trainer.save_model(str(output / "adapter"))


CHECKS: dict[str, Callable[[Path], str]] = {
    "closed-gate": check_closed_gate,
    "fit-bf16": check_fit_bf16,
    "device-map": check_device_map,
    "fsdp": check_fsdp,
    "deepspeed-zero3": check_deepspeed,
    "bnb-4bit": check_bitsandbytes(4),
    "bnb-8bit": check_bitsandbytes(8),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=None, help="Default: a temp dir.")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="Run these only.")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker is not None:
        worker(options.worker)
        return 0
    if not torch.cuda.is_available():
        print("gpu_checks: CUDA is not available here; nothing to check (run on a GPU machine).")
        return 0
    print(f"gpu_checks on {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    work = options.output_dir or Path(tempfile.mkdtemp(prefix="cagul-gpu-checks-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, str, str, float]] = []
    for name in options.only or CHECKS:
        start = time.perf_counter()
        try:
            status, detail = "PASS", CHECKS[name](work)
        except Skip as skip:
            status, detail = "SKIP", str(skip)
        except Exception as error:  # a failing check must not stop the others
            status, detail = "FAIL", f"{type(error).__name__}: {error}"
            traceback.print_exc()
        results.append((name, status, detail, time.perf_counter() - start))
        torch.cuda.empty_cache()
    print("\n== gpu_checks summary ==")
    for name, status, detail, seconds in results:
        first_line = detail.splitlines()[0] if detail else ""
        print(f"{status:4}  {name:16} {seconds:6.1f}s  {first_line}")
    return 1 if any(status == "FAIL" for _, status, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fit a tiny adapter with `CagulTrainer` (or a baseline's LoRA adapters), in one process or
under ``torchrun`` (CPU, gloo).

``tests/test_distributed.py`` runs it twice, once as ``torchrun --nproc_per_node 2`` with half
the per-device batch and once in-process with the whole batch, and compares the adapters::

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_fit.py OUT --per-device-batch 2

With ``--method npo`` (any of `hf_cagul.baselines.BASELINES`) it fits that baseline's LoRA
adapters instead.

With ``--deepspeed VLM_DIR`` it fits under ``accelerate launch`` with the ZeRO-3 config, on
the CPU (DeepSpeed's CPU accelerator, gloo), the tiny LLaVA saved in ``VLM_DIR`` partitioned by
``from_pretrained`` as it loads::

    DS_ACCELERATOR=cpu accelerate launch --config_file examples/accelerate_deepspeed_zero3.yaml \
        --mixed_precision no --num_processes 2 tests/ddp_fit.py OUT --per-device-batch 2 \
        --deepspeed VLM_DIR

Run it from anywhere: it puts ``src/`` and ``tests/`` on the path itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for entry in (TESTS, TESTS.parent / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import torch  # noqa: E402
from run_settings import trainer_arguments  # noqa: E402
from test_trainer import tiny_dataset, training_args  # noqa: E402
from transformers import AutoModelForImageTextToText, Trainer  # noqa: E402

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, get_cagul_model  # noqa: E402
from hf_cagul.baselines import (  # noqa: E402
    UnlearningTrainingConfig,
    get_baseline_trainer,
    prepare_model,
)
from hf_cagul.tiny import tiny_vlm  # noqa: E402

CAGUL = "cagul"
"""``--method`` of the CAGUL adapter (the default); any other is a baseline's name."""

LOG_NAME = "log_history.json"
"""Written next to the adapter: the Trainer's log history of the main process."""


def fit(
    output_dir: Path,
    per_device_batch: int,
    steps: int,
    rows_per_split: int = 6,
    deepspeed_vlm: Path | None = None,
    method: str = CAGUL,
    find_unused_parameters: bool = False,
    depth_weight: float = 0.0,
    depth_loss: str = "npo",
) -> None:
    """Fit the adapter of a tiny LLaVA for ``steps`` steps and save it to ``output_dir``.

    Every process builds the same model, adapter and data (fixed seeds); the Trainer shards
    the batches. The adapter and the log history are written by the main process only.
    ``deepspeed_vlm``: launched with a DeepSpeed ZeRO-3 config; that saved copy of the tiny
    LLaVA is loaded after the training config, so ``from_pretrained`` partitions it.
    ``method``: `CAGUL`, or a baseline fitting LoRA adapters (rank 4) on the language model.
    ``find_unused_parameters``: CAGUL under DDP's unused-parameter search.
    ``depth_weight``, ``depth_loss``: CAGUL with its depth term.
    """
    vlm, processor = tiny_vlm("llava")  # before the config: never under ZeRO-3's init
    if method != CAGUL:
        torch.manual_seed(0)  # the LoRA A matrices
        baseline = get_baseline_trainer(method)(
            prepare_model(vlm, lora_r=4),
            UnlearningTrainingConfig(
                **trainer_arguments(
                    output_dir,
                    max_steps=steps,
                    per_device_train_batch_size=per_device_batch,
                    learning_rate=5e-3,
                )
            ),
            train_dataset=tiny_dataset(rows_per_split),
            processing_class=processor,
        )
        baseline.train()
        save(baseline, output_dir)
        return
    # DeepSpeed on the CPU: accelerate sets DeepSpeed's process group up only when not told
    # to use the CPU, and with a named backend (it has no GPU to pick NCCL for).
    placement = {"use_cpu": False, "ddp_backend": "gloo"} if deepspeed_vlm else {}
    args = training_args(
        output_dir,
        max_steps=steps,
        per_device_train_batch_size=per_device_batch,
        ddp_find_unused_parameters=find_unused_parameters,
        depth_weight=depth_weight,
        depth_loss=depth_loss,
        **placement,
    )
    if deepspeed_vlm is not None:
        vlm = AutoModelForImageTextToText.from_pretrained(deepspeed_vlm)
        whole = [name for name, p in vlm.named_parameters() if not hasattr(p, "ds_id")]
        assert not whole, f"ZeRO-3 did not partition {whole} while loading"
    torch.manual_seed(0)  # the adapter's initial weights
    model = get_cagul_model(vlm, CagulConfig())
    trainer = CagulTrainer(
        model=model,
        args=args,
        train_dataset=tiny_dataset(rows_per_split),
        processing_class=processor,
    )
    trainer.train()
    if deepspeed_vlm is not None:
        refuses_partitioned_save(model, output_dir / "partial")
    save(trainer, output_dir)


def save(trainer: Trainer, output_dir: Path) -> None:
    """Save the fitted adapter in ``output_dir / "adapter"``, the log history next to it."""
    trainer.save_model(str(output_dir / "adapter"))
    if trainer.is_world_process_zero():
        (output_dir / LOG_NAME).write_text(json.dumps(trainer.state.log_history))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # no-op in one process; see tests/fsdp_step.py


def refuses_partitioned_save(model: CagulModel, directory: Path) -> None:
    """``save_pretrained`` of an adapter spread over processes is refused, naming the fix."""
    try:
        model.save_pretrained(directory)
    except ValueError as error:
        assert "trainer.save_model" in str(error), error
    else:
        raise AssertionError("save_pretrained wrote an adapter this process holds part of")
    assert not directory.exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--per-device-batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--deepspeed", type=Path, metavar="VLM_DIR", help="under ZeRO-3")
    parser.add_argument("--method", default=CAGUL, help="cagul, or a baseline (npo, kl...)")
    parser.add_argument(
        "--find-unused-parameters", action="store_true", help="ddp_find_unused_parameters=True"
    )
    parser.add_argument("--depth-weight", type=float, default=0.0, help="CAGUL's depth term")
    parser.add_argument("--depth-loss", default="npo", help="npo or unlikelihood")
    options = parser.parse_args()
    fit(
        options.output_dir,
        options.per_device_batch,
        options.steps,
        deepspeed_vlm=options.deepspeed,
        method=options.method,
        find_unused_parameters=options.find_unused_parameters,
        depth_weight=options.depth_weight,
        depth_loss=options.depth_loss,
    )


if __name__ == "__main__":
    main()
    # Everything is written and the process group destroyed (`save`), yet gloo's threads can
    # still abort the interpreter's teardown ("terminate called without an active exception",
    # seen once in CI after a complete fit): leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""One `CagulTrainer.compute_loss` backward on a VLM sharded by FSDP2 (CPU, gloo).

accelerate enables FSDP on GPUs only (on CPU, ``fsdp=True`` falls back to DDP), so this script
shards the model itself with ``fully_shard``, as accelerate's FSDP2 path does: one unit per
decoder and vision layer, the root unit over the `CagulModel` (the rest of the VLM and the
adapter). ``tests/test_distributed.py`` compares the adapter's gradients with those of one
unsharded process on the whole batch::

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_step.py OUT.safetensors

Without ``torchrun`` it computes the unsharded, whole-batch reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for entry in (TESTS, TESTS.parent / "src"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import torch  # noqa: E402
from ddp_fit import refuses_partitioned_save  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_trainer import make_trainer  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from vlm_inputs import randomise_encoder  # noqa: E402

ROWS = (0, 1, 2, 4)
"""Dataset rows of the whole batch, split in contiguous halves: (forget, retain) and (forget,
forget), so the loss terms' counts differ between the processes."""


def adapter_gradients(output: Path) -> None:
    """Backward one loss; the main process writes the adapter's (full) gradients to ``output``."""
    trainer, model = make_trainer(output.parent / "trainer")
    randomise_encoder(model)  # so that every adapter parameter gets a non-zero gradient
    with torch.no_grad():
        model.active_adapter_module.discriminator.head.weight.normal_(std=0.1)
    processes, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
    if processes > 1:
        for layer in [*model.get_decoder().layers, *model.base_model.model.vision_tower.modules()]:
            if type(layer).__name__ in ("LlamaDecoderLayer", "CLIPEncoderLayer"):
                fully_shard(layer)
        fully_shard(model)
        refuses_partitioned_save(model, output.parent / f"partial-{rank}")
    share = len(ROWS) // processes
    rows = [trainer.train_dataset[i] for i in ROWS[rank * share : (rank + 1) * share]]
    model.train()
    loss = trainer.compute_loss(model, trainer.data_collator(rows))
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    gradients = {}
    for name, parameter in model.active_adapter_module.named_parameters():
        gradient = parameter.grad
        assert gradient is not None, f"{name} got no gradient"
        if isinstance(gradient, DTensor):
            gradient = gradient.full_tensor()  # a collective: every process calls it
        gradients[name] = gradient.contiguous()
    sharded = [p for p in model.base_model.parameters() if isinstance(p, DTensor)]
    assert (processes > 1) == bool(sharded), "FSDP2 did not shard the VLM"
    if rank == 0:
        save_file(gradients, str(output))
    # Every process leaves together with its process group destroyed: a process exiting with
    # gloo's threads alive can abort ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    adapter_gradients(Path(sys.argv[1]))

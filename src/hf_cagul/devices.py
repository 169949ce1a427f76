"""Where a module computes, and whether this process holds all of it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["execution_device", "input_device", "is_partitioned"]


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on.

    That is where its weights are, except for a module that accelerate offloads
    (``device_map`` with ``"cpu"`` or ``"disk"`` entries): its weights wait on the ``meta``
    device and its accelerate hook loads them to its execution device for each call.

    Raises:
        ValueError: If the weights are on ``meta`` and no accelerate hook says where it runs.
    """
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    device = next(module.parameters()).device
    if device.type == "meta":
        raise ValueError(
            f"The weights of {type(module).__name__} are on the meta device and no accelerate "
            "hook says where it runs. Load the VLM fully (no device='meta' / init_empty_weights "
            "without dispatch_model) before wrapping it."
        )
    return device


def input_device(model: Any) -> torch.device:
    """Where a model's inputs must go: the execution device of its input embeddings (of the
    model itself when it has none)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    return execution_device(embeddings if isinstance(embeddings, nn.Module) else model)


def is_partitioned(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are spread over processes, so that this process holds
    only part of them: partitioned by DeepSpeed ZeRO-3, or sharded by FSDP2 (``DTensor``)."""
    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in module.parameters())

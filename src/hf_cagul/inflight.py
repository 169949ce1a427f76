"""Restarting the language model's forward from inside it, and the side passes it runs.

A gate that reads the frozen language model's own hidden state cannot decide before the forward
runs. The forward therefore runs as it would without the adapter; a hook on the layer the gate
reads decides there. An image no gate flags lets the forward go on untouched (bit-identical to
the bare model, at no extra cost). A flagged one stops it with `Restart`, carrying the
rewritten inputs, and the decoder's forward starts again from them, with its cache as it was.

When few rows of a batch hold a flagged image, restarting the whole batch wastes the pass of
every other row. The hook then asks for a `RowRerun` instead: the pass goes on untouched (the
unflagged rows' outputs are the bare model's), the decoder runs once more on the flagged rows
alone, and their outputs and cache rows are spliced into the batch's (`splice_rows`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput

__all__ = [
    "CACHE_ARGUMENTS",
    "Restart",
    "RowRerun",
    "allow_restarts",
    "cache_of",
    "side_pass",
    "splice_rows",
    "splices",
]

CACHE_ARGUMENTS = ("cache", "past_key_values")


class Restart(Exception):
    """Raised inside the decoder's forward: run it again with ``kwargs`` instead."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("restart the decoder's forward")
        self.kwargs = kwargs


@dataclass
class RowRerun:
    """A rerun of the decoder on the batch ``rows`` alone, with ``kwargs`` (already cut to them,
    with no cache: the rerun builds its own), whose outputs replace those rows' outputs."""

    rows: torch.Tensor
    kwargs: dict[str, Any]


def splices(cache: Any) -> bool:
    """Whether a `RowRerun`'s outputs can be spliced into a pass that appends to ``cache``: no
    cache, or a dynamic cache that held nothing before the pass (a prefill). A static cache
    keeps its tensors preallocated at their full length, which a rerun's own cache does not."""
    return cache is None or (type(cache) is DynamicCache and cache.get_seq_length() == 0)


def splice_rows(output: Any, rows: torch.Tensor, rerun: Any) -> Any:
    """``output`` of a decoder pass over the whole batch, with the batch ``rows`` replaced by
    ``rerun``, the output of a pass over those rows alone (same structure): tensors along their
    first axis, tuples and model outputs field by field, a cache layer by layer (in place)."""
    if output is None:
        return None
    if isinstance(output, torch.Tensor):
        return output.index_copy(0, rows.to(output.device), rerun.to(output.dtype))
    if isinstance(output, Cache):
        for layer, fresh in zip(output.layers, rerun.layers, strict=True):
            for name in ("keys", "values"):
                kept, new = getattr(layer, name, None), getattr(fresh, name)
                if isinstance(kept, torch.Tensor) and kept.numel():
                    kept.index_copy_(0, rows.to(kept.device), new.to(kept.dtype))
        return output
    if isinstance(output, ModelOutput):
        for key in list(output.keys()):
            output[key] = splice_rows(output[key], rows, rerun[key])
        return output
    if isinstance(output, tuple | list):
        return type(output)(splice_rows(o, rows, r) for o, r in zip(output, rerun, strict=True))
    raise TypeError(f"Cannot splice a decoder output of type {type(output).__name__}.")


def cache_of(arguments: dict[str, Any]) -> Any:
    """The KV cache a call passes (under either of transformers' names), or None."""
    return next((arguments[n] for n in CACHE_ARGUMENTS if arguments.get(n) is not None), None)


def side_pass(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The decoder kwargs of a side pass (the truncated attention pass): it must see a cached
    conversation's past keys, but never append to the caller's cache."""
    side = {**kwargs, "use_cache": False}
    for name in CACHE_ARGUMENTS:
        cache = side.get(name)
        if cache is not None:
            side[name] = copy.deepcopy(cache) if cache.get_seq_length() > 0 else None
    return side


def allow_restarts(
    decoder: nn.Module,
    armed: Callable[[], bool],
    rerun: Callable[[], RowRerun | None],
) -> Callable[[], None]:
    """Let a hook inside ``decoder`` raise `Restart` during a call for which ``armed()`` is true,
    or ask for a `RowRerun`, which ``rerun()`` hands over (once) when the pass has returned.

    Unarmed calls (every decode step, every call without a gate that reads the state) go
    straight to the original forward. An armed call keeps a copy of its cache (empty at
    prefill) to put back before the restart, so the aborted pass leaves no keys behind.

    Returns:
        A function that removes the wrapper again.
    """
    original = decoder.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not armed():
            return original(*args, **kwargs)
        cache = cache_of(kwargs)
        saved = copy.deepcopy(cache.__dict__) if cache is not None else None
        try:
            output = original(*args, **kwargs)
        except Restart as restart:
            if cache is not None:
                cache.__dict__.update(saved)
            return original(*args, **restart.kwargs)
        request = rerun()
        if request is None:
            return output
        return splice_rows(output, request.rows, original(**request.kwargs))

    decoder.forward = forward

    def remove() -> None:
        del decoder.forward

    return remove

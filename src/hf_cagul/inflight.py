"""Restarting the language model's forward from inside it, and the side passes it runs.

A gate that reads the frozen language model's own hidden state cannot decide before the forward
runs. The forward therefore runs as it would without the adapter; a hook on the layer the gate
reads decides there. An image no gate flags lets the forward go on untouched (bit-identical to
the bare model, at no extra cost). A flagged one stops it with `Restart`, carrying the
rewritten inputs, and the decoder's forward starts again from them, with its cache as it was.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["CACHE_ARGUMENTS", "Restart", "allow_restarts", "cache_of", "side_pass"]

CACHE_ARGUMENTS = ("cache", "past_key_values")


class Restart(Exception):
    """Raised inside the decoder's forward: run it again with ``kwargs`` instead."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("restart the decoder's forward")
        self.kwargs = kwargs


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


def allow_restarts(decoder: nn.Module, armed: Callable[[], bool]) -> Callable[[], None]:
    """Let a hook inside ``decoder`` raise `Restart` during a call for which ``armed()`` is true.

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
            return original(*args, **kwargs)
        except Restart as restart:
            if cache is not None:
                cache.__dict__.update(saved)
            return original(*args, **restart.kwargs)

    decoder.forward = forward

    def remove() -> None:
        del decoder.forward

    return remove

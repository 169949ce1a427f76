"""Text-to-visual attention scores at one decoder layer, under any attention backend.

Every transformers 5.x attention module calls the function registered for its config's
``_attn_implementation``, with query and key states already projected and rotated. For the
model's own implementation ``X``, CAGUL registers a twin ``cagul[X]`` that delegates every call
to ``X`` unchanged (so outputs stay bit-identical). While a `ScoreRequest` is open, the requested
layer also computes the softmax attention rows of the query tokens itself; a *truncated pass*
stops there, a recorded pass (`hf_cagul.CagulModel.record_frozen_pass`) goes on unchanged.
Neither ``sdpa`` nor flash attention return weights, and forcing eager attention on the whole
model would change its numerics, so the weights are recomputed only where needed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_PREFIX = "cagul["


@dataclass
class ScoreRequest:
    """What a pass asks of the attention layer ``layer_idx``.

    ``query_weights`` is ``(batch, query_len)``: each row weights the query tokens of that sample
    (summing to 1 over them). ``scores`` receives ``(batch, key_len)``: the attention each key
    token gets, averaged over heads and weighted over the query tokens, the first time the layer
    runs. ``stop``: then raise `TruncatedPassDone` (a truncated pass); False: the attention runs
    on as it would without the request. ``defer``: keep the layer's attention inputs instead,
    and compute the scores only if `resolve` is called (a pass that may not need them).
    """

    layer_idx: int
    query_weights: torch.Tensor
    scores: torch.Tensor | None = None
    stop: bool = True
    defer: bool = False
    _inputs: tuple[Any, ...] | None = None

    @property
    def answered(self) -> bool:
        """Whether the layer has run for this request (scores computed or inputs kept)."""
        return self.scores is not None or self._inputs is not None

    def answer(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        """What the layer does for the request: keep its inputs, and compute the scores now
        unless the request defers them."""
        self._inputs = (module, query, key, attention_mask, kwargs)
        if not self.defer:
            self.resolve()

    def resolve(self, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The scores, computed now from the kept inputs of a deferred request (None: the
        layer never ran). With ``rows``, computed for those batch rows only (the others are
        zeros): the rows that hold a flagged image, the only ones a rewrite reads."""
        if self.scores is None and self._inputs is not None:
            module, query, key, attention_mask, kwargs = self._inputs
            self._inputs = None
            batch, weights = query.shape[0], self.query_weights
            kept = None if rows is None or len(rows) == batch else rows.to(query.device)
            if kept is not None:
                query, key, weights = query[kept], key[kept], weights[kept.to(weights.device)]
                if attention_mask is not None and attention_mask.shape[0] == batch:
                    attention_mask = attention_mask[kept.to(attention_mask.device)]
            with torch.no_grad():
                scores = text_to_visual_scores(
                    module, query, key, attention_mask, weights, **kwargs
                )
            if kept is not None:
                found, scores = scores, scores.new_zeros(batch, scores.shape[1])
                scores[kept.to(scores.device)] = found
            self.scores = scores
        return self.scores


class TruncatedPassDone(Exception):
    """Raised inside the truncated pass once the requested layer's scores are computed."""


_REQUESTS: ContextVar[tuple[ScoreRequest, ...]] = ContextVar("cagul_score_requests", default=())


def attention_probabilities(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """Softmax attention weights ``(batch, heads, query_len, key_len)`` in float32.

    The same weights eager attention returns with ``output_attentions=True``, for the inputs an
    attention function receives: keys repeated for grouped-query attention, a boolean or
    additive 4-D mask, or no mask (causal, as ``sdpa`` infers it).
    """
    query = query.float()
    key = key.float()
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads != kv_heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    q_len, k_len = logits.shape[-2:]
    if attention_mask is None:
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if causal and q_len > 1:
            rows = torch.arange(q_len, device=logits.device).unsqueeze(-1) + (k_len - q_len)
            allowed = torch.arange(k_len, device=logits.device) <= rows
            logits = logits.masked_fill(~allowed, float("-inf"))
    else:
        mask = attention_mask[..., :k_len]
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    # Rows with every key masked (padding queries) have no distribution: make them zero.
    return torch.softmax(logits, dim=-1).nan_to_num(nan=0.0)


def text_to_visual_scores(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_weights: torch.Tensor,
    **kwargs: Any,
) -> torch.Tensor:
    """Attention each key gets, mean over heads, weighted over query rows: ``(batch, key_len)``."""
    probs = attention_probabilities(
        module,
        query,
        key,
        attention_mask,
        scaling=kwargs.get("scaling"),
        softcap=kwargs.get("softcap"),
        is_causal=kwargs.get("is_causal"),
    )
    weights = query_weights.to(device=probs.device, dtype=probs.dtype)
    return torch.einsum("bhqk,bq->bk", probs, weights) / probs.shape[1]


def _original_function(original: str, module: nn.Module) -> Callable[..., Any]:
    if original == "eager":
        # Eager attention lives in each modeling file, not in the global registry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[original]


def _make_scoring_attention(original: str) -> Callable[..., Any]:
    def cagul_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        layer_idx = getattr(module, "layer_idx", None)
        stop = False
        for request in _REQUESTS.get():
            if request.layer_idx == layer_idx and not request.answered:
                request.answer(module, query, key, attention_mask, kwargs)
                stop |= request.stop
        if stop:
            raise TruncatedPassDone
        return _original_function(original, module)(
            module, query, key, value, attention_mask, **kwargs
        )

    return cagul_attention


def scoring_implementation(original: str) -> str:
    """Register (once) and return the name of the scoring twin of attention ``original``."""
    if original.startswith(_PREFIX):
        raise ValueError(
            "This model's language model already runs CAGUL's attention: it carries an adapter. "
            "Call `unload()` on the existing CagulModel first."
        )
    name = f"{_PREFIX}{original}]"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_scoring_attention(original))
        if original in ALL_MASK_ATTENTION_FUNCTIONS:
            # The twin must receive exactly the mask the original would have received.
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


def original_implementation(name: str) -> str:
    """Inverse of `scoring_implementation`."""
    return name[len(_PREFIX) : -1] if name.startswith(_PREFIX) else name


@contextmanager
def request_scores(*requests: ScoreRequest) -> Iterator[tuple[ScoreRequest, ...]]:
    """Within the block, attention at each request's layer fills it (and stops the pass if
    the request says so); the requests of an enclosing block wait until it closes."""
    token = _REQUESTS.set(requests)
    try:
        yield requests
    finally:
        _REQUESTS.reset(token)

"""The two trainable modules of a CAGUL adapter: the forget discriminator and the token encoder.

Both see the visual tokens exactly as the language model receives them (after the projector),
so they work for any VLM family with the same code. Images carry different numbers of visual
tokens, so the modules take the tokens of all images concatenated, with an index saying which
image each token belongs to.
"""

from __future__ import annotations

import torch
from torch import nn


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of ``values`` per segment id (``segment[i]`` is row ``i``'s segment)."""
    sums = values.new_zeros(num_segments, values.shape[-1]).index_add(0, segment, values)
    counts = torch.bincount(segment, minlength=num_segments).clamp_min(1).to(values.dtype)
    return sums / counts.unsqueeze(-1)


class ForgetDiscriminator(nn.Module):
    """Scores each image: does it show a subject of the forget set?

    A token-wise MLP over the layer-normalised visual tokens, pooled per image by mean and by
    max (a face covers a few tokens: the mean alone dilutes it among background tokens), then a
    linear head. Returns one logit per image; ``sigmoid(logit) > gate_threshold`` flags it.
    """

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.token_mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU())
        self.head = nn.Linear(2 * inner_size, 1)
        # Start undecided but closed: a fresh adapter leaves every image alone at threshold 0.5.
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, -4.0)

    def forward(
        self, tokens: torch.Tensor, image_index: torch.Tensor, num_images: int
    ) -> torch.Tensor:
        """Logits of shape ``(num_images,)`` from ``tokens`` ``(T, hidden)`` of all images."""
        features = self.token_mlp(self.norm(tokens))
        index = image_index.unsqueeze(-1).expand_as(features)
        peak = features.new_full((num_images, features.shape[-1]), float("-inf"))
        peak = peak.scatter_reduce(0, index, features, reduce="amax")
        pooled = torch.cat([_segment_mean(features, image_index, num_images), peak], dim=-1)
        return self.head(pooled).squeeze(-1)


class TokenEncoder(nn.Module):
    """Rewrites selected visual tokens, conditioned on the mean of their image's tokens.

    ``out = token + MLP([norm(token), norm(context)])``. The last layer starts at zero, so a
    fresh encoder returns its input exactly: an untrained adapter changes nothing.
    """

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, hidden_size)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """New tokens ``(T, hidden)`` for ``tokens`` ``(T, hidden)`` with per-row ``context``."""
        joint = torch.cat([self.token_norm(tokens), self.context_norm(context)], dim=-1)
        return tokens + self.mlp(joint)


class CagulAdapter(nn.Module):
    """One named adapter: a discriminator and an encoder for the same hidden size."""

    def __init__(self, hidden_size: int, discriminator_size: int, encoder_size: int) -> None:
        super().__init__()
        self.discriminator = ForgetDiscriminator(hidden_size, discriminator_size)
        self.encoder = TokenEncoder(hidden_size, encoder_size)

    @staticmethod
    def image_context(
        tokens: torch.Tensor, image_index: torch.Tensor, num_images: int
    ) -> torch.Tensor:
        """Mean visual token of each image, shape ``(num_images, hidden)``."""
        return _segment_mean(tokens, image_index, num_images)

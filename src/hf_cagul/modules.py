"""The trainable modules of a CAGUL adapter: a gate (`hf_cagul.gates`) and the token encoder.

Both see the visual tokens exactly as the language model receives them (after the projector),
so they work for any VLM family with the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_cagul.config import CagulConfig
from hf_cagul.gates import ForgetDiscriminator, Gate, build_gate, segment_mean

__all__ = ["CagulAdapter", "ForgetDiscriminator", "TokenEncoder"]


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
    """One named adapter: a gate and an encoder for the same hidden size.

    The gate is stored as ``discriminator`` (the key prefix of its weights in
    ``cagul_adapter.safetensors``, whatever its design).

    Args:
        gate: The gate that flags images.
        encoder: The encoder that rewrites the selected tokens of flagged images.
    """

    def __init__(self, gate: Gate, encoder: TokenEncoder) -> None:
        super().__init__()
        self.discriminator = gate
        self.encoder = encoder

    @classmethod
    def from_config(cls, config: CagulConfig) -> CagulAdapter:
        """Fresh modules for a bound ``config`` (its ``hidden_size`` is the model's).

        Raises:
            ValueError: If ``config.gate`` names no registered gate.
        """
        return cls(
            build_gate(config), TokenEncoder(config.hidden_size or 0, config.encoder_hidden_size)
        )

    @classmethod
    def state_shapes(cls, config: CagulConfig) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor in the ``state_dict`` of `from_config`'s adapter, allocating
        nothing: the modules are built on the ``meta`` device, whatever their sizes.

        Raises:
            ValueError: If ``config.gate`` names no registered gate.
        """
        with torch.device("meta"):
            adapter = cls.from_config(config)
        return {name: tuple(tensor.shape) for name, tensor in adapter.state_dict().items()}

    @staticmethod
    def image_context(
        tokens: torch.Tensor, image_index: torch.Tensor, num_images: int
    ) -> torch.Tensor:
        """Mean visual token of each image, shape ``(num_images, hidden)``."""
        return segment_mean(tokens, image_index, num_images)

"""The trainable modules start as a no-op and pool per image correctly."""

from __future__ import annotations

import torch

from hf_cagul import ForgetDiscriminator, TokenEncoder
from hf_cagul.gates import GateInputs
from hf_cagul.modules import CagulAdapter


def test_fresh_encoder_returns_its_input_exactly() -> None:
    torch.manual_seed(0)
    encoder = TokenEncoder(hidden_size=12, inner_size=8)
    tokens, context = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.equal(encoder(tokens, context), tokens)


def test_fresh_encoder_still_receives_gradients() -> None:
    encoder = TokenEncoder(hidden_size=12, inner_size=8)
    encoder(torch.randn(5, 12), torch.randn(5, 12)).pow(2).sum().backward()
    assert encoder.mlp[-1].weight.grad is not None
    assert encoder.mlp[-1].weight.grad.abs().sum() > 0


def test_fresh_discriminator_flags_nothing() -> None:
    discriminator = ForgetDiscriminator(hidden_size=12, inner_size=8)
    tokens = torch.randn(10, 12) * 100
    index = torch.tensor([0] * 4 + [1] * 6)
    probabilities = torch.sigmoid(discriminator(GateInputs(tokens, index, 2)))
    assert probabilities.shape == (2,)
    assert (probabilities < 0.05).all()


def test_image_context_is_the_mean_per_image() -> None:
    tokens = torch.arange(12.0).reshape(6, 2)
    index = torch.tensor([0, 0, 1, 1, 1, 2])
    context = CagulAdapter.image_context(tokens, index, 3)
    expected = torch.stack([tokens[:2].mean(0), tokens[2:5].mean(0), tokens[5]])
    assert torch.allclose(context, expected)


def test_discriminator_scores_images_independently() -> None:
    torch.manual_seed(0)
    discriminator = ForgetDiscriminator(hidden_size=6, inner_size=4)
    torch.nn.init.normal_(discriminator.head.weight)
    a, b = torch.randn(3, 6), torch.randn(5, 6)
    together = discriminator(GateInputs(torch.cat([a, b]), torch.tensor([0] * 3 + [1] * 5), 2))
    alone = discriminator(GateInputs(b, torch.zeros(5, dtype=torch.long), 1))
    assert torch.allclose(together[1], alone[0], atol=1e-6)


def test_discriminator_pools_mean_and_max_per_image() -> None:
    torch.manual_seed(0)
    discriminator = ForgetDiscriminator(hidden_size=4, inner_size=3)
    torch.nn.init.normal_(discriminator.head.weight)
    tokens = torch.randn(3, 4)
    features = discriminator.token_mlp(discriminator.norm(tokens))
    pooled = torch.stack(
        [
            torch.cat([features[:2].mean(0), features[:2].amax(0)]),
            torch.cat([features[2], features[2]]),
        ]
    )
    expected = discriminator.head(pooled).squeeze(-1)
    actual = discriminator(GateInputs(tokens, torch.tensor([0, 0, 1]), 2))
    assert torch.allclose(actual, expected, atol=1e-6)

"""Gates: which images show a subject to forget.

A gate scores every image of a call with one logit; ``sigmoid(logit) > gate_threshold`` flags
the image for rewriting, and an image no gate flags reaches the frozen model untouched. Each
gate design is a `Gate` subclass registered under a name with `register_gate`, chosen by
`CagulConfig.gate` and saved with the adapter; a new design is a new class, with no edit to the
model, the trainer or the evaluation::

    @register_gate
    class MyGate(Gate):
        name = "my-gate"

        def __init__(self, config: CagulConfig) -> None:
            super().__init__()
            ...

        def forward(self, inputs: GateInputs) -> torch.Tensor:
            ...  # (num_images,) logits

The paper's gate, `ForgetDiscriminator` (``"visual_tokens"``), reads the projected visual tokens.
With `CagulConfig.gate_members` above 1, the gate is a `GateEnsemble` of that many copies of the
design, and `build_gate` builds either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from hf_cagul.config import DEFAULT_GATE, CagulConfig

__all__ = [
    "GATES",
    "LANGUAGE_STATE",
    "VISUAL_AND_LANGUAGE",
    "VISUAL_TOKENS",
    "ForgetDiscriminator",
    "Gate",
    "GateEnsemble",
    "GateInputs",
    "LanguageStateGate",
    "VisualAndLanguageGate",
    "build_gate",
    "closed_head",
    "gate_class",
    "register_gate",
    "segment_mean",
]

VISUAL_TOKENS = "visual_tokens"
"""`Gate.reads` of a gate that reads only the projected visual tokens."""
LANGUAGE_STATE = "language_state"
"""`Gate.reads` of a gate that also reads the frozen language model's hidden state."""
VISUAL_AND_LANGUAGE = "visual_and_language_state"
"""The name of `VisualAndLanguageGate`, which reads both."""


def segment_mean(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of ``values`` per segment id (``segment[i]`` is row ``i``'s segment)."""
    sums = values.new_zeros(num_segments, values.shape[-1]).index_add(0, segment, values)
    counts = torch.bincount(segment, minlength=num_segments).clamp_min(1).to(values.dtype)
    return sums / counts.unsqueeze(-1)


@dataclass
class GateInputs:
    """What a gate reads about the images of one call.

    Images carry different numbers of visual tokens, so the tokens of all images come
    concatenated, with the image each belongs to.

    Attributes:
        tokens: ``(T, hidden)`` visual tokens of every image, as the language model receives
            them (after the projector), in the dtype and on the device of the gate.
        image_index: ``(T,)`` long tensor: the image (``0..num_images-1``) of each token.
        num_images: Number of images in the call.
        language_state: ``(num_images, hidden)``, for gates that read it (`LANGUAGE_STATE`):
            the frozen language model's hidden state after `CagulConfig.gate_layer` at the last
            prompt token of each image's sample, read during the real forward; else None.
    """

    tokens: torch.Tensor
    image_index: torch.Tensor
    num_images: int
    language_state: torch.Tensor | None = None


class Gate(nn.Module):
    """Base of every gate design: one logit per image (flagged when its sigmoid exceeds
    `CagulConfig.gate_threshold`).

    Subclasses set `name`, build themselves from a bound `CagulConfig` (its ``hidden_size`` is
    the language model's) and implement `forward`. A fresh gate should start closed (every
    probability below 0.5), so that a fresh adapter changes nothing. A gate whose `reads` is
    `LANGUAGE_STATE` gets ``GateInputs.language_state`` too: the model then reads it during the
    real forward and restarts that forward only when an image is flagged.
    """

    name: ClassVar[str] = ""
    reads: str = VISUAL_TOKENS

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        """Logits of shape ``(inputs.num_images,)``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: CagulConfig) -> Gate:
        """The gate of an adapter with ``config`` (bound to a model: ``hidden_size`` is set)."""
        return cls(config)


GATES: dict[str, type[Gate]] = {}
"""Every registered gate class, by the name `CagulConfig.gate` gives it."""

_G = TypeVar("_G", bound=type[Gate])


def register_gate(gate: _G) -> _G:
    """Class decorator: make ``gate`` selectable as ``CagulConfig(gate=gate.name)``.

    Raises:
        ValueError: If the class has no ``name`` or another class holds it.
    """
    if not gate.name:
        raise ValueError(f"{gate.__name__} needs a class attribute `name` to be registered.")
    if GATES.get(gate.name, gate) is not gate:
        raise ValueError(
            f"A gate named {gate.name!r} is already registered ({GATES[gate.name].__name__}); "
            "give the new class another name."
        )
    GATES[gate.name] = gate
    return gate


def gate_class(name: str) -> type[Gate]:
    """The gate class registered as ``name``.

    Raises:
        ValueError: If no gate has that name (it lists the known ones).
    """
    try:
        return GATES[name]
    except KeyError:
        raise ValueError(
            f"Unknown gate {name!r}; registered gates: {', '.join(sorted(GATES))}. A gate of "
            "your own is registered with `hf_cagul.gates.register_gate` before the adapter is "
            "built or loaded."
        ) from None


class GateEnsemble(Gate):
    """Several copies of one gate design, read as one: the probability of an image is the mean
    of its members' probabilities (`CagulConfig.gate_members`).

    Members are fitted apart, each with its own initialisation and order of steps (see
    `hf_cagul.trainer.gate_fit.fit_gate`), on the same cache and calibration split. Averaging
    them smooths what depends on the initialisation; on the demo's benchmark that was not where
    the gate's noise lay, and five members caught the same share of leaking photos as one.
    Members start closed, so the ensemble does too. Its weights are the members', under
    ``members.<i>.``.

    Args:
        members: The gates, of one design.

    Raises:
        ValueError: If there are no members or they are of different designs.
    """

    def __init__(self, members: Sequence[Gate]) -> None:
        super().__init__()
        if not members or len({type(member) for member in members}) != 1:
            raise ValueError(
                f"A gate ensemble needs one or more gates of one design; got "
                f"{[type(member).__name__ for member in members]}."
            )
        self.members = nn.ModuleList(members)
        self.reads = members[0].reads

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        """Logits ``(num_images,)`` of the members' mean probability, computed in log space
        (exact where members saturate)."""
        logits = torch.stack([member(inputs) for member in self.members]).float()
        count = math.log(len(self.members))
        flagged = torch.logsumexp(F.logsigmoid(logits), dim=0) - count
        passed = torch.logsumexp(F.logsigmoid(-logits), dim=0) - count
        return flagged - passed


def build_gate(config: CagulConfig) -> Gate:
    """The fresh gate of a bound ``config``: its design (`gate_class`), or a `GateEnsemble` of
    ``config.gate_members`` copies of it.

    Raises:
        ValueError: If ``config.gate`` names no registered gate.
    """
    design = gate_class(config.gate)
    if config.gate_members == 1:
        return design.from_config(config)
    return GateEnsemble([design.from_config(config) for _ in range(config.gate_members)])


@register_gate
class ForgetDiscriminator(Gate):
    """The paper's gate: does the image show a subject of the forget set, from its visual tokens?

    A token-wise MLP over the layer-normalised visual tokens, pooled per image by mean and by
    max (a face covers a few tokens: the mean alone dilutes it among background tokens), then a
    linear head.

    Args:
        hidden_size: Width of the visual tokens (the language model's hidden size).
        inner_size: Width of the token-wise MLP.
    """

    name = DEFAULT_GATE

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.token_mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU())
        self.head = closed_head(2 * inner_size)

    @classmethod
    def from_config(cls, config: CagulConfig) -> ForgetDiscriminator:
        """A discriminator of width ``config.discriminator_hidden_size``."""
        return cls(config.hidden_size or 0, config.discriminator_hidden_size)

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        """Logits of shape ``(num_images,)`` from the visual tokens of all images."""
        return self.head(_pooled_tokens(self.norm, self.token_mlp, inputs)).squeeze(-1)


def closed_head(in_features: int) -> nn.Linear:
    """A gate's output layer, undecided but closed: zero weights and a bias of -4, so a fresh
    gate gives every image a probability of 0.018 and flags none at threshold 0.5."""
    head = nn.Linear(in_features, 1)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -4.0)
    return head


def _pooled_tokens(norm: nn.Module, token_mlp: nn.Module, inputs: GateInputs) -> torch.Tensor:
    """``(num_images, 2 * inner)``: the token-wise MLP of the normalised visual tokens, pooled
    per image by mean and by max."""
    features = token_mlp(norm(inputs.tokens))
    index = inputs.image_index.unsqueeze(-1).expand_as(features)
    peak = features.new_full((inputs.num_images, features.shape[-1]), float("-inf"))
    peak = peak.scatter_reduce(0, index, features, reduce="amax")
    mean = segment_mean(features, inputs.image_index, inputs.num_images)
    return torch.cat([mean, peak], dim=-1)


def _language_state(gate: Gate, inputs: GateInputs) -> torch.Tensor:
    """``inputs.language_state``, or a clear error when the call did not read it."""
    if inputs.language_state is None:
        raise ValueError(
            f"{type(gate).__name__} reads GateInputs.language_state, which this call lacks: "
            "build the inputs with CagulModel.gate_inputs, which reads it."
        )
    return inputs.language_state


@register_gate
class LanguageStateGate(Gate):
    """A gate that reads the model's own recognition: the frozen language model's hidden state
    after `CagulConfig.gate_layer` at the last prompt token of the image's sample (or, with
    `CagulConfig.gate_state_tokens` ``"visual"``, its mean over the image's own visual tokens;
    ``"both"``, the two side by side).

    Leaks come from what the model recognises; the deeper the state, the better it predicts
    them. A layer-normalised MLP with one hidden layer of ``discriminator_hidden_size``.

    Args:
        hidden_size: Width of the language model's hidden state.
        inner_size: Width of the hidden layer.
    """

    name = LANGUAGE_STATE
    reads = LANGUAGE_STATE

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU())
        self.head = closed_head(inner_size)

    @classmethod
    def from_config(cls, config: CagulConfig) -> LanguageStateGate:
        """A gate of width ``config.discriminator_hidden_size`` over the state the config reads
        (`CagulConfig.gate_state_size`)."""
        return cls(config.gate_state_size, config.discriminator_hidden_size)

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        """Logits of shape ``(num_images,)`` from each image's language state."""
        return self.head(self.mlp(self.norm(_language_state(self, inputs)))).squeeze(-1)


@register_gate
class VisualAndLanguageGate(Gate):
    """A gate that reads both what the photo shows and what the model makes of it: the paper's
    pooled visual tokens (`ForgetDiscriminator`'s branch) beside the language model's state
    (`LanguageStateGate`'s), one linear head over both.

    The two disagree where each is weak: the visual tokens carry the face whatever the
    question, the state carries the model's recognition, which is what leaks.

    Args:
        hidden_size: Width of the visual tokens (and of the language model's state).
        inner_size: Width of each branch's hidden layer.
        state_size: Width of the state read, when not ``hidden_size``
            (`CagulConfig.gate_state_size`).
    """

    name = VISUAL_AND_LANGUAGE
    reads = LANGUAGE_STATE

    def __init__(self, hidden_size: int, inner_size: int, state_size: int | None = None) -> None:
        super().__init__()
        state_size = state_size or hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.token_mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU())
        self.state_norm = nn.LayerNorm(state_size)
        self.state_mlp = nn.Sequential(nn.Linear(state_size, inner_size), nn.GELU())
        self.head = closed_head(3 * inner_size)

    @classmethod
    def from_config(cls, config: CagulConfig) -> VisualAndLanguageGate:
        """A gate whose branches have width ``config.discriminator_hidden_size``."""
        return cls(
            config.hidden_size or 0, config.discriminator_hidden_size, config.gate_state_size
        )

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        """Logits of shape ``(num_images,)`` from each image's tokens and language state."""
        state = self.state_mlp(self.state_norm(_language_state(self, inputs)))
        visual = _pooled_tokens(self.norm, self.token_mlp, inputs)
        return self.head(torch.cat([visual, state], dim=-1)).squeeze(-1)

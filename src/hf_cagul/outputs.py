"""What a `hf_cagul.CagulModel` gives besides the VLM's own outputs.

* the forward's output carries ``gate_logits`` and ``image_spans`` (`with_gate_outputs`): the
  gate's training signal, read by `hf_cagul.CagulTrainer`;
* `GateScores`: what `CagulModel.gate_probabilities` returns;
* `ImageTrace`: one record per image from `CagulModel.trace`, for looking only;
* `FrozenPass`: what the frozen VLM computed in a pass that rewrote nothing
  (`CagulModel.record_frozen_pass`), handed to the next call on the same inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from hf_cagul.method import GateDecision

__all__ = ["FrozenPass", "GateScores", "ImageTrace", "image_traces", "with_gate_outputs"]


@dataclass
class FrozenPass:
    """What the frozen VLM computed for one call in which nothing was rewritten, for a second
    call on the same inputs that rewrites (`CagulModel.record_frozen_pass`).

    Nothing here depends on the adapter's weights, only on the frozen VLM, its inputs and the
    adapter's config: the second call reads it instead of running the side passes that compute
    it (the pass aborted at the gate's layer, the truncated attention pass).

    Attributes:
        scores: ``(batch, n)`` selection scores along the visual states, by ``(scoring layer,
            query_tokens)``, as the truncated pass computes them.
        language_state: ``(num_images, hidden)`` the language model's state that a gate
            reading it reads (`hf_cagul.method.VisualTokens.language_state`), or None.
        query_mask: The call's query mask (before ``query_tokens``), which the scores depend on.
    """

    scores: dict[tuple[int, str], torch.Tensor] = dataclasses.field(default_factory=dict)
    language_state: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None

    @property
    def recorded(self) -> bool:
        """Whether a call with images filled the record."""
        return self.query_mask is not None


@dataclass
class ImageTrace:
    """What the adapter did to one image of a call (see `CagulModel.trace`); for looking only.

    Attributes:
        sample: Batch row of the image.
        start: First position of its visual tokens.
        end: One past the last position of its visual tokens.
        logit: Gate logit (detached: the training signal is the forward's ``gate_logits``).
        probability: Gate probability that the image shows a forget subject.
        flagged: Whether the image was rewritten.
        scores: Selection scores of each of its visual tokens (flagged images only).
        selected: Positions of the rewritten tokens (flagged images only).
        adapter: Name of the adapter the record speaks for: the one that rewrote the image
            when ``flagged``, else the active adapter with the highest probability. ``logit``
            and ``probability`` are that adapter's.
        probabilities: Probability given by each active adapter, by name.
    """

    sample: int
    start: int
    end: int
    logit: torch.Tensor
    probability: float
    flagged: bool
    scores: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    adapter: str = "default"
    probabilities: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass
class GateScores:
    """The gates' view of the images of one call (`CagulModel.gate_probabilities`).

    Attributes:
        adapters: The active adapters, in active order (the rows below).
        logits: ``(adapters, images)`` gate logits.
        probabilities: ``(adapters, images)`` their sigmoids.
        image_spans: ``(images, 3)`` ``(sample, start, end)`` of each image's visual tokens.
    """

    adapters: list[str]
    logits: torch.Tensor
    probabilities: torch.Tensor
    image_spans: torch.Tensor


_OUTPUT_CLASSES: dict[type, type] = {}


def with_gate_outputs(output: Any, logits: torch.Tensor, spans: torch.Tensor) -> Any:
    """``output`` as an instance of a subclass of its class with two more fields.

    Args:
        output: The VLM's output (anything but a `ModelOutput` is returned as it is).
        logits: ``(active adapters, images)`` gate logits.
        spans: ``(images, 3)`` ``(sample, start, end)`` of each image's visual tokens.
    """
    base = type(output)
    if not isinstance(output, ModelOutput):
        return output
    if base not in _OUTPUT_CLASSES:
        # A ModelOutput subclass is a dataclass whose fields all default to None.
        _OUTPUT_CLASSES[base] = dataclasses.make_dataclass(
            f"Cagul{base.__name__}",
            [
                ("gate_logits", torch.Tensor | None, None),
                ("image_spans", torch.Tensor | None, None),
            ],
            bases=(base,),
        )
    return _OUTPUT_CLASSES[base](**output, gate_logits=logits, image_spans=spans)


def image_traces(decision: GateDecision, spans: torch.Tensor, names: list[str]) -> list[ImageTrace]:
    """One `ImageTrace` per image of a call from the gates' ``decision`` (active ``names``)."""
    return [
        ImageTrace(
            sample=int(s),
            start=int(b),
            end=int(e),
            logit=decision.logits[a, image].detach(),
            probability=float(decision.probabilities[a, image]),
            flagged=bool(decision.flagged[image]),
            adapter=names[a],
            probabilities=dict(zip(names, decision.probabilities[:, image].tolist(), strict=True)),
        )
        for image, ((s, b, e), a) in enumerate(
            zip(spans.tolist(), decision.chosen.tolist(), strict=True)
        )
    ]

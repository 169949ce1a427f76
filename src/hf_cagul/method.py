"""The CAGUL method for one call, on tensors: gate, score, select, encode, write back.

It knows nothing of hooks, contexts or adapter names: `hf_cagul.model.CagulModel` finds the
visual tokens of a call, hands them here with the active adapters, and passes the result on to
the frozen language model.

1. `VisualTokens.gather` takes each image's tokens by position;
2. `decide` runs every active adapter's gate: an image is flagged when some gate's
   probability exceeds its threshold, and rewritten by the most confident of those (ties: the
   first in active order);
3. `attention_scores` reads text-to-visual attention at one decoder layer from a truncated
   pass the caller runs (`query_weights` says which text tokens ask);
4. `select_tokens` picks the tokens of a flagged image to rewrite (lowest attention by default);
5. `rewrite` encodes them and writes them back into a copy of the visual states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hf_cagul.attention import ScoreRequest, TruncatedPassDone, request_scores
from hf_cagul.config import CagulConfig
from hf_cagul.gates import GateInputs, segment_mean
from hf_cagul.modules import CagulAdapter

__all__ = [
    "GateDecision",
    "Rewrite",
    "VisualTokens",
    "attention_scores",
    "decide",
    "default_query_mask",
    "last_query_token",
    "query_weights",
    "rewrite",
    "select_tokens",
]


@dataclass
class VisualTokens:
    """The visual tokens of one call, gathered by position.

    Attributes:
        states: ``(batch, n, hidden)`` tensor that holds them (``inputs_embeds`` in most
            families).
        spans: ``(num_images, 3)`` long tensor of ``(sample, start, end)``: image ``i``'s
            tokens are ``states[sample, start:end]``.
        image_index: ``(T,)`` the image of each gathered token.
        samples: ``(T,)`` the batch row of each gathered token.
        positions: ``(T,)`` the position of each gathered token along ``n``.
        tokens: ``(T, hidden)`` the gathered tokens, ``states[samples, positions]``.
        language_state: ``(num_images, hidden)`` language-model state of each image
            (`read_language_state`), once read; for gates that read it.
    """

    states: torch.Tensor
    spans: torch.Tensor
    image_index: torch.Tensor
    samples: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor
    language_state: torch.Tensor | None = None

    @classmethod
    def gather(cls, states: torch.Tensor, spans: torch.Tensor) -> VisualTokens:
        """Gather the tokens of every image of ``spans`` from ``states``."""
        spans = spans.to(states.device)
        lengths = spans[:, 2] - spans[:, 1]
        image_index = torch.repeat_interleave(
            torch.arange(len(spans), device=states.device), lengths
        )
        first = torch.repeat_interleave(spans[:, 1] - (lengths.cumsum(0) - lengths), lengths)
        positions = torch.arange(len(image_index), device=states.device) + first
        samples = spans[:, 0][image_index]
        tokens = states[samples, positions]
        return cls(states, spans, image_index, samples, positions, tokens)

    @property
    def num_images(self) -> int:
        """Number of images in the call."""
        return len(self.spans)

    def gate_inputs(self, adapter: CagulAdapter) -> GateInputs:
        """What ``adapter``'s gate reads, on its device and in its dtype."""
        tokens = _as_input(adapter, self.tokens)
        state = None if self.language_state is None else _as_input(adapter, self.language_state)
        return GateInputs(tokens, self.image_index.to(tokens.device), self.num_images, state)

    def read_language_state(
        self, hidden: torch.Tensor, query_mask: torch.Tensor, where: str = "last_prompt"
    ) -> None:
        """Keep the state ``hidden`` ``(batch, seq, hidden)`` of a decoder layer for each image:
        at the last prompt token (``query_mask``) of its sample, or (``where="visual"``) the
        mean over its own visual tokens, whose spans are then positions of ``hidden``'s
        sequence, or (``"both"``) the two side by side (`CagulConfig.gate_state_tokens`).
        Attached to the graph where the pass has one: the frozen VLM's weights take no
        gradient, the pixels of an attack do."""
        read = []
        if where != "visual":
            last = last_query_token(query_mask.to(hidden.device)).long().argmax(dim=1)
            samples = self.spans[:, 0].to(hidden.device)
            read.append(hidden[samples, last[samples]])
        if where != "last_prompt":
            states = hidden[self.samples.to(hidden.device), self.positions.to(hidden.device)]
            read.append(segment_mean(states, self.image_index.to(hidden.device), self.num_images))
        self.language_state = torch.cat(read, dim=-1) if len(read) > 1 else read[0]


def _as_input(adapter: CagulAdapter, tensor: torch.Tensor) -> torch.Tensor:
    parameter = next(adapter.parameters())
    return tensor.to(device=parameter.device, dtype=parameter.dtype)


@dataclass
class GateDecision:
    """What the active adapters' gates decided about each image of a call.

    Attributes:
        logits: Gate logit of each active adapter for each image, ``(adapters, images)``,
            attached to the autograd graph (the gate's training signal).
        probabilities: Their sigmoids, detached, float32 on the CPU.
        flagged: ``(images,)`` whether the image is rewritten.
        chosen: ``(images,)`` the adapter that rewrites a flagged image (the most confident
            of those that flag it), or that is most confident about an unflagged one.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    flagged: torch.Tensor
    chosen: torch.Tensor


def decide(
    visual: VisualTokens,
    adapters: Sequence[CagulAdapter],
    thresholds: Sequence[float],
    forced: bool | None = None,
) -> GateDecision:
    """Run each adapter's gate on every image and decide which images are rewritten, and by whom.

    Args:
        visual: The call's visual tokens.
        adapters: The active adapters, in active order.
        thresholds: Each adapter's gate threshold.
        forced: Flag every image (True) or none (False) whatever the gates say.
    """
    per_adapter = [adapter.discriminator(visual.gate_inputs(adapter)) for adapter in adapters]
    logits = torch.stack([logit.to(per_adapter[0].device) for logit in per_adapter])
    probabilities = torch.sigmoid(logits.detach().float()).cpu()
    if forced is None:
        flags = probabilities > torch.tensor(thresholds).unsqueeze(1)
    else:
        flags = torch.full(probabilities.shape, forced, dtype=torch.bool)
    flagged = flags.any(dim=0)
    # argmax keeps the first of equal maxima, i.e. the earlier adapter in active order.
    chosen = torch.where(
        flagged,
        probabilities.masked_fill(~flags, -1.0).argmax(dim=0),
        probabilities.argmax(dim=0),
    )
    return GateDecision(logits, probabilities, flagged, chosen)


def last_query_token(mask: torch.Tensor) -> torch.Tensor:
    """Keep only the last True of each row of ``mask`` (``query_tokens="last"``)."""
    last = torch.where(mask.any(dim=1), mask.long().cumsum(1).argmax(dim=1), -1)
    only_last = torch.zeros_like(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    only_last[rows, last[rows]] = True
    return only_last


def default_query_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(batch, seq)`` bool: the tokens of a call that may ask (before image tokens are
    removed): every attended token that is not an answer token (``labels == -100`` elsewhere).
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None and attention_mask.dim() == 2:
        # Continuing from a cache, the mask also covers the cached tokens: keep the columns of
        # this call's tokens.
        mask &= attention_mask[:, -input_ids.shape[1] :].bool().to(mask.device)
    if labels is not None and labels.shape == input_ids.shape:
        mask &= labels == -100
    return mask


def query_weights(
    query_mask: torch.Tensor, config: CagulConfig, query_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``(batch, seq)`` weights of the text tokens whose attention ranks the visual tokens.

    Args:
        query_mask: ``(batch, seq)`` bool: the prompt's text tokens.
        config: The adapter's config (``query_tokens``).
        query_rows: Positions the family allows to ask, on top of the prompt mask.
    """
    query = last_query_token(query_mask) if config.query_tokens == "last" else query_mask
    if query_rows is not None:
        query = query & query_rows.to(query.device)
    weights = query.float()
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def attention_scores(
    layer: int, weights: torch.Tensor, run_truncated_pass: Callable[[], object], num_keys: int
) -> torch.Tensor:
    """Attention ``(batch, num_keys)`` that the last ``num_keys`` keys receive at ``layer``.

    Args:
        layer: Decoder layer whose attention is read.
        weights: ``(batch, seq)`` weight of each query position (`query_weights`).
        run_truncated_pass: Runs the language model on the call's inputs; it is stopped as soon
            as ``layer`` has computed its attention.
        num_keys: Length of the visual states' axis.

    Raises:
        RuntimeError: If the layer never called its attention function.
    """
    request = ScoreRequest(layer, weights)
    try:
        with torch.no_grad(), request_scores(request):
            run_truncated_pass()
    except TruncatedPassDone:
        pass
    if request.scores is None:
        raise RuntimeError(
            f"Decoder layer {layer} never called its attention function, so CAGUL got no "
            "attention scores. The attention implementation must go through transformers' "
            "AttentionInterface."
        )
    return request.scores[:, -num_keys:]


def select_tokens(scores: torch.Tensor, config: CagulConfig, ordinal: int) -> torch.Tensor:
    """Indices of the tokens to rewrite among the ``scores`` of its sample's image ``ordinal``."""
    k = config.num_selected(len(scores))
    if config.token_selection == "random":
        # A fixed draw per image of a sample: the same whatever the batch around it, its
        # padding, or how many beams generate copies it into.
        generator = torch.Generator().manual_seed(ordinal)
        return torch.randperm(len(scores), generator=generator)[:k].to(scores.device)
    return torch.topk(scores, k, largest=config.token_selection == "highest").indices


@dataclass
class Rewrite:
    """The visual states of a call with its flagged images' selected tokens rewritten.

    Attributes:
        states: A new ``(batch, n, hidden)`` tensor (the input is never modified).
        samples: ``(R,)`` batch row of each rewritten token.
        positions: ``(R,)`` position of each rewritten token.
        scores: Per image, the attention scores of its tokens (flagged images only).
        selected: Per image, the positions of its rewritten tokens (flagged images only).
    """

    states: torch.Tensor
    samples: torch.Tensor
    positions: torch.Tensor
    scores: dict[int, torch.Tensor]
    selected: dict[int, torch.Tensor]


def rewrite(
    visual: VisualTokens,
    decision: GateDecision,
    adapters: Sequence[CagulAdapter],
    configs: Sequence[CagulConfig],
    scores_for: Callable[[CagulConfig], torch.Tensor],
) -> Rewrite:
    """Encode the selected tokens of every flagged image and write them back.

    Args:
        visual: The call's visual tokens.
        decision: The gates' decision (`decide`); at least one image must be flagged.
        adapters: The active adapters, in the order of ``decision``.
        configs: Their configs.
        scores_for: ``(batch, n)`` selection scores along the visual states for an adapter's
            config (attention, or scores the caller computed before).
    """
    states = visual.states
    rewritten = states.clone()
    spans = visual.spans.tolist()
    image_samples = [sample for sample, _, _ in spans]
    scores_by_image: dict[int, torch.Tensor] = {}
    selected_by_image: dict[int, torch.Tensor] = {}
    all_samples: list[torch.Tensor] = []
    all_positions: list[torch.Tensor] = []
    for a, (adapter, config) in enumerate(zip(adapters, configs, strict=True)):
        images = torch.nonzero(decision.flagged & (decision.chosen == a)).squeeze(-1).tolist()
        if not images:
            continue
        scores = scores_for(config)
        selected_rows = []
        for image in images:
            sample, start, end = spans[image]
            image_scores = scores[sample, start:end]
            ordinal = image_samples[:image].count(sample)
            chosen = select_tokens(image_scores, config, ordinal).sort().values + start
            scores_by_image[image] = image_scores.detach().cpu()
            selected_by_image[image] = chosen.cpu()
            selected_rows.append(
                torch.stack(
                    [torch.full_like(chosen, sample), chosen, torch.full_like(chosen, image)]
                )
            )
        samples, positions, image_of = torch.cat(selected_rows, dim=1).to(states.device)
        tokens = _as_input(adapter, visual.tokens)
        context = adapter.image_context(
            tokens, visual.image_index.to(tokens.device), visual.num_images
        )
        new_tokens = adapter.encoder(
            _as_input(adapter, states[samples, positions]), context[image_of.to(context.device)]
        )
        rewritten[samples, positions] = new_tokens.to(device=states.device, dtype=states.dtype)
        all_samples.append(samples)
        all_positions.append(positions)
    return Rewrite(
        rewritten,
        torch.cat(all_samples),
        torch.cat(all_positions),
        scores_by_image,
        selected_by_image,
    )

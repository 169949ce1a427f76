"""`CagulModel`: a frozen VLM wrapped by CAGUL hooks, and `get_cagul_model`.

One forward call goes like this (``docs/concepts.md`` has the picture):

1. a pre-hook on the VLM notes the call's ``input_ids`` and how many images it carries;
2. a pre-hook on the language model sees ``inputs_embeds`` with the visual tokens already in
   place and takes each image's tokens *by position* (or wherever the family says they are:
   `hf_cagul.families.VisualStates`);
3. the method (`hf_cagul.method`) gates each image, scores and selects the tokens of flagged
   images and rewrites them; an image no gate flags passes untouched;
4. the real forward goes on with the rewritten states.

This module holds the hook lifecycle, the per-call state and the routing between active
adapters; the named adapters and their files are `hf_cagul.adapters.NamedAdapters`. Per-call
state lives in context variables, so concurrent calls from several threads never see each
other's state, and two wrapped models never see each other's.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from hf_cagul import method
from hf_cagul.adapters import NamedAdapters, SavedAdapter, bind_config, check_adapter_name
from hf_cagul.attention import ScoreRequest, request_scores, scoring_implementation
from hf_cagul.config import CagulConfig
from hf_cagul.families import VisualStates, detect_family
from hf_cagul.gates import LANGUAGE_STATE, GateInputs
from hf_cagul.inflight import (
    CACHE_ARGUMENTS,
    Restart,
    RowRerun,
    allow_restarts,
    cache_of,
    side_pass,
    splices,
)
from hf_cagul.modules import CagulAdapter
from hf_cagul.outputs import FrozenPass, GateScores, ImageTrace, image_traces, with_gate_outputs
from hf_cagul.switches import PerModel

__all__ = ["CagulModel", "FrozenPass", "GateScores", "ImageTrace", "get_cagul_model"]

# transformers' own check that input_ids hold as many image tokens as the vision tower gave
# visual tokens; the VLM raises it before CAGUL's language-model hook runs.
_VLM_MISMATCH = "image features and image tokens do not match"


class _GateScored(Exception):
    """Stops a `CagulModel.gate_probabilities` call once the gates have scored the images."""

    def __init__(self, decision: method.GateDecision, tokens: method.VisualTokens) -> None:
        super().__init__("gate scored")
        self.decision, self.tokens = decision, tokens


@dataclass
class _CallState:
    input_ids: torch.Tensor
    runs: torch.Tensor  # (num_images, 3): sample, start, end
    query_mask: torch.Tensor  # (batch, seq) bool: prompt text tokens, before `query_tokens`
    selection_scores: torch.Tensor | None
    frozen: FrozenPass | None = None


@dataclass
class _Recording:
    """A `record_frozen_pass` block's record and, while its call runs, the score requests
    that call's attention layers fill."""

    record: FrozenPass
    requests: dict[tuple[int, str], ScoreRequest] | None = None
    query_mask: torch.Tensor | None = None
    num_keys: int = 0
    stack: ExitStack | None = None


_CALL: PerModel[_CallState | None] = PerModel("cagul_call", None)
_IN_TRUNCATED_PASS: PerModel[bool] = PerModel("cagul_truncated", False)
_DISABLED: PerModel[bool] = PerModel("cagul_disabled", False)
_FORCED_GATE: PerModel[bool | None] = PerModel("cagul_gate", None)
# What `forward` passes to the hooks: query mask, selection scores, and where gate outputs go.
_FORWARD: PerModel[dict[str, Any] | None] = PerModel("cagul_forward", None)
_TRACES: PerModel[list[ImageTrace] | None] = PerModel("cagul_trace", None)
_GATE_ONLY: PerModel[bool] = PerModel("cagul_gate_only", False)
_ARMED: PerModel[bool] = PerModel("cagul_armed", False)
# The flagged rows an armed call's pass asks to run again on their own, once it has returned.
_RERUN: PerModel[RowRerun | None] = PerModel("cagul_rerun", None)
_RECORDING: PerModel[_Recording | None] = PerModel("cagul_recording", None)
# The score requests a call's in-flight pass answers, open until the call returns.
_DEFERRED: PerModel[ExitStack | None] = PerModel("cagul_deferred", None)


@contextmanager
def _explain_placeholder_mismatch() -> Iterator[None]:
    """Turn transformers' terse placeholder/feature mismatch into an error that names the fix."""
    try:
        yield
    except ValueError as err:
        if _VLM_MISMATCH not in str(err).lower():
            raise
        raise ValueError(
            f"{err} (transformers). The image tokens in input_ids do not match what the vision "
            "tower produced for these images: the prompt was expanded by another processor or "
            "for another image size, or its image tokens were edited or truncated. Build "
            "input_ids and images in one call of this model's own processor. The adapter is "
            "unaffected: the next call works."
        ) from err


class CagulModel(NamedAdapters):
    """A frozen vision-language model with a CAGUL unlearning adapter injected through hooks.

    Build one with `get_cagul_model` (a fresh adapter) or `CagulModel.from_pretrained` (a saved
    one). Call it and ``generate`` with exactly the inputs of the wrapped VLM. The VLM's weights
    are never modified: every one of its parameters is frozen, and `unload` gives it back.

    Like a PEFT model it holds named adapters (`add_adapter`, `load_adapter`, `set_adapter`,
    `delete_adapter`); several can be active at once, one per forget request
    (``docs/adapters.md`` gives the composition rule).

    Args:
        model: A VLM of a supported family (see `hf_cagul.families.supported_families`).
        config: The adapter's configuration; its model fields are filled in or checked.
        adapter_name: Name of the adapter.
        saved: Weights of a saved adapter to install instead of fresh ones (`from_pretrained`).
        is_trainable: With ``saved``: keep the adapter trainable.
    """

    # transformers' Trainer refuses to fit a quantized model (bitsandbytes...) unless trainable
    # adapters sit on it, which it reads from this PEFT attribute: a CagulModel is exactly that.
    _hf_peft_config_loaded = True

    def __init__(
        self,
        model: PreTrainedModel,
        config: CagulConfig,
        adapter_name: str = "default",
        *,
        saved: SavedAdapter | None = None,
        is_trainable: bool = True,
    ) -> None:
        super().__init__()
        check_adapter_name(adapter_name)
        family = detect_family(model)
        self.family = family
        self.base_model = model
        self._decoder = family.decoder(model)
        self._image_token_id = family.image_token_id(model.config)
        self.cagul_config = {}
        self.cagul_adapters = nn.ModuleDict()
        self._active_adapters = [adapter_name]
        self._remove_restarts: Callable[[], None] | None = None
        # Nothing is frozen or hooked before the adapter is built: a refused adapter leaves
        # the VLM as it was.
        self._install(adapter_name, bind_config(config, model, family), saved, is_trainable)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self._forward_signature = inspect.signature(model.forward)
        self._original_attention = family.text_config(model.config)._attn_implementation
        model.set_attn_implementation(
            {"text_config": scoring_implementation(self._original_attention)}
        )
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            model.register_forward_hook(self._after_model, always_call=True),
            self._decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
        ]

    def __getattr__(self, name: str) -> Any:
        """Fall back to the wrapped VLM (``config``, ``device``, ``generation_config``...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ calls

    def forward(
        self,
        *args: Any,
        query_mask: torch.Tensor | None = None,
        selection_scores: torch.Tensor | None = None,
        frozen_pass: FrozenPass | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the wrapped VLM with the adapter active.

        Takes the VLM's own arguments, and returns the VLM's output as a subclass of its class
        with two more fields: ``gate_logits``, ``(active adapters, images)`` gate logits in
        active order, attached to the autograd graph, and ``image_spans``, ``(images, 3)``
        ``(sample, start, end)`` of each image's visual tokens (both None for a call without
        images).

        Args:
            query_mask: ``(batch, seq)`` bool, optional: the prompt tokens whose attention
                ranks the visual tokens. By default every attended, non-visual token that is
                not an answer token (``labels == -100``) is one.
            selection_scores: ``(batch, n)``, optional: scores to rank the visual tokens by
                instead of computing attention (``n`` runs along the visual states: the input
                positions where visual tokens sit in ``inputs_embeds``), e.g. the
                ``ImageTrace.scores`` of an earlier call. No truncated pass runs then.
            frozen_pass: What `record_frozen_pass` kept of a call on the same inputs and query
                mask: the gates read its language state and the selection uses its scores, so
                no side pass runs (the outputs are those the call computes without it).

        Raises:
            ValueError: If ``frozen_pass`` was recorded on other inputs.
        """
        self._check_loaded()
        gate: dict[str, Any] = {
            "query_mask": query_mask,
            "selection_scores": selection_scores,
            "frozen_pass": frozen_pass,
        }
        with _FORWARD.scoped(self, gate), _explain_placeholder_mismatch():
            output = self.base_model(*args, **kwargs)
        if "logits" not in gate:
            return output
        return with_gate_outputs(output, gate["logits"], gate["spans"])

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` of the wrapped VLM; the adapter acts on the prefill step only."""
        self._check_loaded()
        with _explain_placeholder_mismatch():
            return cast(Any, self.base_model).generate(*args, **kwargs)

    @torch.no_grad()
    def gate_probabilities(self, **inputs: Any) -> GateScores:
        """Score the images of ``inputs`` with every active gate, without running the language
        model past the visual states (nothing is generated or rewritten).

        Raises:
            ValueError: If the inputs carry no image.
        """
        decision, tokens = self._gate_pass(inputs)
        names = list(self._active_adapters)
        return GateScores(names, decision.logits, decision.probabilities, tokens.spans)

    def gate_logits(self, **inputs: Any) -> torch.Tensor:
        """The gate logit of every active adapter for each image of ``inputs``,
        ``(adapters, images)``, attached to the autograd graph: with ``pixel_values`` that
        require grad, the gradient reaches the pixels through the vision tower, the projector
        and, for a gate that reads the language model's state, the decoder layers up to the
        one it reads. For attacks on the gate (`hf_cagul.evaluation.attacks`); serving scores
        come from `gate_probabilities`. The VLM's weights stay frozen.

        Raises:
            ValueError: If the inputs carry no image.
        """
        return self._gate_pass(inputs)[0].logits

    @torch.no_grad()
    def gate_inputs(self, **inputs: Any) -> GateInputs:
        """What the active adapter's gate reads about the images of ``inputs`` (detached), as
        the frozen model computes it: the features to cache for fitting the gate apart.

        Raises:
            ValueError: If the inputs carry no image, or several adapters are active.
        """
        adapter = self.active_adapter_module
        return self._gate_pass(inputs)[1].gate_inputs(adapter)

    def _gate_pass(
        self, inputs: Mapping[str, Any]
    ) -> tuple[method.GateDecision, method.VisualTokens]:
        """Run the VLM on ``inputs`` until the gates have scored its images, then stop."""
        self._check_loaded()
        try:
            with _GATE_ONLY.scoped(self, True), _explain_placeholder_mismatch():
                self.base_model(**inputs)
        except _GateScored as scored:
            return scored.decision, scored.tokens
        raise ValueError("The gate needs inputs with images (pixel values and tokens).")

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block, calls run the bare VLM (no copy: the hooks stand aside)."""
        with _DISABLED.scoped(self, True):
            yield

    @contextmanager
    def force_gate(self, flagged: bool) -> Iterator[None]:
        """Within the block, treat every image as flagged (``True``) or as not (``False``)."""
        with _FORCED_GATE.scoped(self, flagged):
            yield

    @contextmanager
    def record_frozen_pass(self) -> Iterator[FrozenPass]:
        """Within the block, calls rewrite nothing (as under ``force_gate(False)``: logits
        bit-identical to the bare VLM's), and the first call with images fills the yielded
        `FrozenPass`: the selection scores of every active adapter's config, read in flight,
        and the language state its gate reads.

        Pass it as ``frozen_pass`` to a call on the same inputs and query mask: that call then
        runs no side pass. `hf_cagul.CagulTrainer` takes its reference logits this way, so one
        pass of the frozen VLM gives the reference, the selection scores and the gate's input.
        """
        recording = _Recording(FrozenPass())
        try:
            with _FORCED_GATE.scoped(self, False), _RECORDING.scoped(self, recording):
                yield recording.record
        finally:
            self._close_recording(recording)

    @contextmanager
    def trace(self) -> Iterator[list[ImageTrace]]:
        """Collect an `ImageTrace` for every image the calls inside the block process."""
        records: list[ImageTrace] = []
        with _TRACES.scoped(self, records):
            yield records

    def unload(self) -> PreTrainedModel:
        """Remove every hook, restore the attention implementation and return the bare VLM.

        The VLM's parameters stay frozen (``requires_grad=False``), as they were while wrapped.
        """
        self._check_loaded()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._remove_restarts is not None:
            self._remove_restarts()
        self.base_model.set_attn_implementation({"text_config": self._original_attention})
        self._unloaded = True
        return self.base_model

    # ------------------------------------------------------------------ hooks

    def _check_loaded(self) -> None:
        if getattr(self, "_unloaded", False):
            raise RuntimeError(
                "This CagulModel was unloaded; use the VLM `unload()` returned, or wrap it again."
            )

    def _scoring_layer(self, config: CagulConfig) -> int:
        """The decoder layer whose attention ranks the visual tokens for ``config`` (see
        `VLMFamily.scoring_layer`)."""
        text_config = self.family.text_config(self.base_model.config)
        return self.family.scoring_layer(text_config, config.resolved_attention_layer)

    def _check_layer(self, config: CagulConfig) -> None:
        self._scoring_layer(config)
        if config.gate_state_tokens != "last_prompt" and not self.family.expands_image_tokens:
            raise ValueError(
                f"gate_state_tokens={config.gate_state_tokens!r} reads the states of the "
                "image's visual tokens in the language model's sequence, but "
                f"{self.family.name} passes its images "
                "through cross-attention, not as tokens of the sequence: use "
                "gate_state_tokens='last_prompt'."
            )

    def _install(self, adapter_name: str, config: CagulConfig, *args: Any, **kwargs: Any) -> None:
        super()._install(adapter_name, config, *args, **kwargs)
        gate = cast(CagulAdapter, self.cagul_adapters[adapter_name]).discriminator
        if gate.reads == LANGUAGE_STATE and self._remove_restarts is None:
            # Looked up before the decoder's pre-hooks run: in place before any call.
            self._remove_restarts = allow_restarts(self._decoder, self._armed, self._rerun)

    def _before_model(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        _CALL.put(self, None)
        _RERUN.put(self, None)  # a call that failed after its hook asked for a rerun left one
        if _DISABLED.get(self):
            return
        bound = kwargs  # generate calls with keywords only: nothing to bind on a decode step
        if args:
            bound = self._forward_signature.bind_partial(*args, **kwargs).arguments
            bound.update(bound.pop("kwargs", {}))
        input_ids = bound.get("input_ids")
        num_images = self.family.count_images(bound)
        image_token_id = self._image_token_id
        if input_ids is None:
            if num_images:
                raise ValueError(
                    "CAGUL finds visual tokens through input_ids, but this call passes images "
                    "with inputs_embeds only. Pass input_ids (as the processor returns them)."
                )
            return
        cache = cache_of(bound)
        continuing = cache is not None and cache.get_seq_length() > 0
        if continuing and num_images == 0:
            # A decode step of generate (the images were handled at prefill), or a later turn
            # without new images: nothing to find, so no search of input_ids (a device sync).
            return
        runs = self.family.image_runs(input_ids, image_token_id)
        if num_images == 0:
            if len(runs):
                raise ValueError(
                    f"input_ids hold {len(runs)} image placeholder(s) (token id "
                    f"{image_token_id}) but the call passes no images. Pass the images "
                    "to the processor together with the text."
                )
            return
        if len(runs) != num_images:
            raise ValueError(
                f"The batch carries {num_images} image(s) but its text holds {len(runs)} "
                f"image placeholder(s) (runs of token id {image_token_id}). Every image "
                "needs exactly one placeholder in its sample's text (two placeholders written "
                "back to back merge into one run: put text between them); build the inputs "
                "with the model's processor, which expands each placeholder to the image's tokens."
            )
        passed = _FORWARD.get(self) or {}
        query = passed.get("query_mask")
        if query is None:
            query = method.default_query_mask(
                input_ids, bound.get("attention_mask"), bound.get("labels")
            )
        query = query.to(input_ids.device).bool() & (input_ids != self._image_token_id)
        _CALL.put(
            self,
            _CallState(
                input_ids, runs, query, passed.get("selection_scores"), passed.get("frozen_pass")
            ),
        )

    def _after_model(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        _CALL.put(self, None)
        deferred = _DEFERRED.get(self)
        if deferred is not None:
            _DEFERRED.put(self, None)
            deferred.close()
        recording = _RECORDING.get(self)
        if recording is not None:
            self._close_recording(recording)

    def _open_recording(
        self, recording: _Recording, visual: VisualStates, state: _CallState
    ) -> None:
        """Ask the attention layers of the call starting now for every active config's
        selection scores, without stopping the pass (`record_frozen_pass`)."""
        recording.requests, recording.stack = self._open_score_requests(visual, state)
        recording.query_mask = state.query_mask
        recording.num_keys = visual.states.shape[1]

    @staticmethod
    def _close_recording(recording: _Recording) -> None:
        """Close the requests of a recorded call and keep what they got (once)."""
        if recording.stack is None:
            return
        recording.stack.close()
        recording.stack = None
        requests = recording.requests or {}
        if all(request.scores is not None for request in requests.values()):
            record = recording.record
            record.scores = {
                key: cast(torch.Tensor, request.scores)[:, -recording.num_keys :]
                for key, request in requests.items()
            }
            record.query_mask = recording.query_mask

    def _before_decoder(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        state = _CALL.get(self)
        if state is None or _IN_TRUNCATED_PASS.get(self) or _DISABLED.get(self):
            return None
        visual = self.family.visual_states(
            self.base_model.config, kwargs, state.input_ids, state.runs
        )
        if visual is None:
            return None
        _CALL.put(self, None)  # one rewrite per call, even if the decoder runs again
        recording = _RECORDING.get(self)
        if recording is not None and recording.requests is None:
            self._open_recording(recording, visual, state)
        rewritten = self._route(visual, state, args, kwargs)
        if rewritten is None:
            return None
        return args, rewritten

    # ------------------------------------------------------------------ routing

    def _route(
        self,
        visual: VisualStates,
        state: _CallState,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The decoder's kwargs with the flagged images' selected tokens rewritten, or None.

        When an active gate reads the language model's state, the decision waits for the
        layer it reads, in flight (`hf_cagul.inflight`), and this returns None.
        """
        adapters = [cast(CagulAdapter, self.cagul_adapters[n]) for n in self._active_adapters]
        tokens = method.VisualTokens.gather(visual.states, visual.spans)
        layers = {
            (self.cagul_config[name].resolved_gate_layer, self.cagul_config[name].gate_state_tokens)
            for name, adapter in zip(self._active_adapters, adapters, strict=True)
            if adapter.discriminator.reads == LANGUAGE_STATE
        }
        if state.frozen is not None:
            tokens.language_state = _frozen_state(state.frozen, visual, state, needed=bool(layers))
        if state.frozen is not None or not layers:
            rewrite = self._decide(visual, state, tokens, args, kwargs, lambda: side_pass(kwargs))
            return None if rewrite is None else rewrite[0]
        if len(layers) > 1:
            raise ValueError(
                f"The active adapters {self._active_adapters} read the language model's state "
                f"at different (gate_layer, gate_state_tokens) {sorted(layers)}: activate "
                "adapters that read it at one place."
            )
        gate_layer, where = layers.pop()
        layer = cast(nn.Module, self._decoder.layers[gate_layer])
        side = side_pass(kwargs)  # now: the pass below appends to the caller's cache
        splice = not args and splices(cache_of(kwargs))
        deferred = self._defer_scores(visual, state, gate_layer)

        def read(module: nn.Module, inputs: Any, output: Any) -> None:
            handle.remove()
            hidden = output[0] if isinstance(output, tuple) else output
            tokens.read_language_state(hidden, state.query_mask, where)
            rewrite = self._decide(visual, state, tokens, args, kwargs, lambda: side, deferred)
            if rewrite is None:
                return
            rewritten, rows = rewrite
            rerun = (
                self._row_rerun(rewritten, rows(), visual.states.shape[0], gate_layer)
                if splice
                else None
            )
            if rerun is None:
                raise Restart(rewritten)
            _RERUN.put(self, rerun)

        handle = layer.register_forward_hook(read)
        _ARMED.put(self, True)
        return None

    def _defer_scores(
        self, visual: VisualStates, state: _CallState, gate_layer: int
    ) -> dict[tuple[int, str], ScoreRequest]:
        """Ask the layers up to ``gate_layer`` of the in-flight pass to keep what the active
        configs' selection scores need, computed only for a flagged image: then no truncated
        pass runs (an unflagged image costs nothing). None while recording, which computes
        its own."""
        if _RECORDING.get(self) is not None:
            return {}
        requests, stack = self._open_score_requests(visual, state, defer=True, up_to=gate_layer)
        _DEFERRED.put(self, stack)
        return requests

    def _open_score_requests(
        self,
        visual: VisualStates,
        state: _CallState,
        defer: bool = False,
        up_to: int | None = None,
    ) -> tuple[dict[tuple[int, str], ScoreRequest], ExitStack]:
        """Non-stopping score requests, one per ``(scoring layer, query_tokens)`` of the active
        configs (only layers up to ``up_to`` when given), open until the returned stack closes.
        """
        requests: dict[tuple[int, str], ScoreRequest] = {}
        for name in self._active_adapters:
            config = self.cagul_config[name]
            key = (self._scoring_layer(config), config.query_tokens)
            if key not in requests and (up_to is None or key[0] <= up_to):
                weights = method.query_weights(
                    state.query_mask.to(visual.states.device), config, visual.query_rows
                )
                requests[key] = ScoreRequest(key[0], weights, stop=False, defer=defer)
        stack = ExitStack()
        stack.enter_context(request_scores(*requests.values()))
        return requests, stack

    def _row_rerun(
        self, rewritten: dict[str, Any], rows: torch.Tensor, batch: int, gate_layer: int
    ) -> RowRerun | None:
        """A rerun of the flagged ``rows`` (of ``batch``) alone, where it costs less than
        restarting the batch (None: restart it). A restart repeats the layers up to
        ``gate_layer`` and then the whole pass for every row; a rerun lets the pass finish and
        repeats it for ``rows``.
        """
        depth = len(self._decoder.layers)
        if len(rows) * depth >= batch * (gate_layer + 1):
            return None
        uncached = {**rewritten, **{name: None for name in CACHE_ARGUMENTS if name in rewritten}}
        cut = self.family.side_pass_rows(uncached, rows, batch)
        return None if cut is None else RowRerun(rows, cut)

    def _rerun(self) -> RowRerun | None:
        """The row rerun the pass that just returned asked for (once)."""
        rerun = _RERUN.get(self)
        _RERUN.put(self, None)
        return rerun

    def _armed(self) -> bool:
        """Whether the decoder call starting now reads the state in flight (once per call)."""
        armed = _ARMED.get(self)
        _ARMED.put(self, False)
        return armed

    def _decide(
        self,
        visual: VisualStates,
        state: _CallState,
        tokens: method.VisualTokens,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        side: Callable[[], dict[str, Any]],
        deferred: Mapping[tuple[int, str], ScoreRequest] | None = None,
    ) -> tuple[dict[str, Any], Callable[[], torch.Tensor]] | None:
        """Gate, and rewrite the flagged images: the decoder's new kwargs and the batch rows
        that hold a flagged image (found when first asked: a device sync that a call with its
        scores given never needs), or None (``side``: the kwargs of a side pass,
        `hf_cagul.inflight.side_pass`; ``deferred``: score requests the in-flight pass
        answered, by scoring layer and query mode)."""
        names = self._active_adapters
        adapters = [cast(CagulAdapter, self.cagul_adapters[name]) for name in names]
        configs = [self.cagul_config[name] for name in names]
        thresholds = [config.gate_threshold for config in configs]
        decision = method.decide(tokens, adapters, thresholds, _FORCED_GATE.get(self))
        recording = _RECORDING.get(self)
        if recording is not None:
            recording.record.language_state = tokens.language_state
        if _GATE_ONLY.get(self):
            raise _GateScored(decision, tokens)
        passed = _FORWARD.get(self)
        if passed is not None:
            passed.update(logits=decision.logits, spans=tokens.spans)
        traces = self._record(decision, tokens, names)
        if not bool(decision.flagged.any()):
            return None

        scores: dict[tuple[int, str], torch.Tensor] = {}
        rows = functools.cache(
            lambda: tokens.spans[decision.flagged.to(tokens.spans.device), 0].unique()
        )

        def scores_for(config: CagulConfig) -> torch.Tensor:
            if state.selection_scores is not None:
                return state.selection_scores.to(visual.states.device)
            key = (self._scoring_layer(config), config.query_tokens)
            if state.frozen is not None and key in state.frozen.scores:
                return state.frozen.scores[key].to(visual.states.device)
            found = deferred[key].resolve(rows()) if deferred and key in deferred else None
            if found is not None:
                return found[:, -visual.states.shape[1] :]
            if key not in scores:
                scores[key] = self._attention_scores(visual, state, config, args, side(), rows())
            return scores[key]

        result = method.rewrite(tokens, decision, adapters, configs, scores_for)
        for image, trace in enumerate(traces):
            trace.scores = result.scores.get(image)
            trace.selected = result.selected.get(image)
        rewritten = self.family.rewrite_extra_visual_inputs(
            self.family.with_visual_states(kwargs, visual, result.states),
            result.samples,
            result.positions,
        )
        return rewritten, rows

    def _record(
        self, decision: method.GateDecision, tokens: method.VisualTokens, names: list[str]
    ) -> list[ImageTrace]:
        """The call's image records, kept when a `trace` block is open."""
        records = image_traces(decision, tokens.spans, names)
        traces = _TRACES.get(self)
        if traces is not None:
            traces.extend(records)
        return records

    def _attention_scores(
        self,
        visual: VisualStates,
        state: _CallState,
        config: CagulConfig,
        args: tuple[Any, ...],
        side: dict[str, Any],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Attention ``(batch, n)`` that each visual state receives from ``config``'s queries,
        from a truncated pass over the batch ``rows`` only (those holding a flagged image) where
        the family can cut the call to them (`VLMFamily.side_pass_rows`); the other rows' scores
        are zeros, which no rewrite reads."""
        embeds = visual.states
        weights = method.query_weights(
            state.query_mask.to(embeds.device), config, visual.query_rows
        )
        truncated = self.family.with_visual_states(side, visual, embeds.detach())
        batch = embeds.shape[0]
        cut = None
        if not args and len(rows) < batch:
            cut = self.family.side_pass_rows(truncated, rows, batch)
        passed = truncated if cut is None else cut

        def run() -> None:
            with _IN_TRUNCATED_PASS.scoped(self, True):
                self._decoder(*args, **passed)

        layer, num_keys = self._scoring_layer(config), embeds.shape[1]
        if cut is None:
            return method.attention_scores(layer, weights, run, num_keys)
        found = method.attention_scores(layer, weights[rows.to(weights.device)], run, num_keys)
        scores = found.new_zeros(batch, found.shape[1])
        scores[rows.to(scores.device)] = found
        return scores


def _frozen_state(
    frozen: FrozenPass, visual: VisualStates, state: _CallState, needed: bool
) -> torch.Tensor | None:
    """The language state a `FrozenPass` kept for this call, after checking that it was
    recorded on the same inputs (``needed``: an active gate reads it)."""
    problem = None
    if not frozen.recorded:
        problem = "it holds nothing (recorded on a call without images?)"
    elif frozen.query_mask is None or not torch.equal(
        frozen.query_mask.to(state.query_mask.device), state.query_mask
    ):
        problem = "its query mask differs from this call's"
    elif any(s.shape != visual.states.shape[:2] for s in frozen.scores.values()):
        problem = "its scores do not match this call's visual states"
    elif needed and frozen.language_state is None:
        problem = "it holds no language state, which an active gate reads"
    elif frozen.language_state is not None and len(frozen.language_state) != len(visual.spans):
        problem = "its language state is for another number of images"
    if problem is not None:
        raise ValueError(
            f"frozen_pass was not recorded on this call's inputs: {problem}. Record it with "
            "`record_frozen_pass()` on a call with the same inputs and query_mask, with the "
            "same adapters active."
        )
    return frozen.language_state if needed else None


def get_cagul_model(
    model: PreTrainedModel, config: CagulConfig, adapter_name: str = "default"
) -> CagulModel:
    """Inject a fresh CAGUL adapter into ``model`` (freezing it) and return the wrapper.

    A fresh adapter changes nothing: its gate starts closed and its encoder returns its input.
    Fit it with `hf_cagul.CagulTrainer`.
    """
    return CagulModel(model, config, adapter_name)

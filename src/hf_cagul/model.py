"""`CagulModel`: a frozen VLM wrapped by CAGUL hooks, and `get_cagul_model`.

One forward call goes like this (``docs/concepts.md`` has the picture):

1. a pre-hook on the VLM notes the call's ``input_ids`` and how many images it carries;
2. a pre-hook on the language model sees ``inputs_embeds`` with the visual tokens already in
   place and takes each image's tokens *by position* (or wherever the family says they are:
   `hf_cagul.families.VisualStates`);
3. the discriminator scores each image; an image below the gate threshold passes untouched;
4. for flagged images a truncated pass of the language model up to the attention layer gives
   text-to-visual attention, and the least-attended tokens are selected;
5. the encoder rewrites them in ``inputs_embeds`` and the real forward goes on.

Per-call state lives in context variables, so concurrent calls from several threads never see
each other's state.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from hf_cagul import persistence
from hf_cagul.attention import (
    ScoreRequest,
    TruncatedPassDone,
    original_implementation,
    request_scores,
    scoring_implementation,
)
from hf_cagul.config import CagulConfig
from hf_cagul.families import VisualStates, VLMFamily, detect_family
from hf_cagul.modules import CagulAdapter

_CACHE_ARGUMENTS = ("cache", "past_key_values")
# transformers' own check that input_ids hold as many image tokens as the vision tower gave
# visual tokens; the VLM raises it before CAGUL's language-model hook runs.
_VLM_MISMATCH = "image features and image tokens do not match"


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


@dataclass
class ImageTrace:
    """What the adapter did to one image of a call (see `CagulModel.trace`).

    Attributes:
        sample: Batch row of the image.
        start: First position of its visual tokens.
        end: One past the last position of its visual tokens.
        logit: Discriminator logit, attached to the autograd graph (the training signal).
        probability: Discriminator probability that the image shows a forget subject.
        flagged: Whether the image was rewritten.
        scores: Text-to-visual attention of each of its visual tokens (flagged images only).
        selected: Positions of the rewritten tokens (flagged images only).
    """

    sample: int
    start: int
    end: int
    logit: torch.Tensor
    probability: float
    flagged: bool
    scores: torch.Tensor | None = None
    selected: torch.Tensor | None = None


@dataclass
class _CallState:
    input_ids: torch.Tensor
    runs: torch.Tensor  # (num_images, 3): sample, start, end
    query_mask: torch.Tensor  # (batch, seq) bool: prompt text tokens


def _bind_config(config: CagulConfig, model: PreTrainedModel, family: VLMFamily) -> CagulConfig:
    """Fill the config's model fields, or check them when the config already has them."""
    text_config = family.text_config(model.config)
    actual = {
        "family": family.name,
        "hidden_size": int(text_config.hidden_size),
        "image_token_id": family.image_token_id(model.config),
        "num_hidden_layers": int(text_config.num_hidden_layers),
    }
    differences = [
        f"{name}: adapter {getattr(config, name)!r}, this model {value!r}"
        for name, value in actual.items()
        if getattr(config, name) is not None and getattr(config, name) != value
    ]
    if differences:
        raise ValueError(
            "This adapter was fitted on a different model ("
            + "; ".join(differences)
            + f"; adapter base model: {config.base_model_name_or_path!r}). Load it into the "
            "model it was fitted on, or fit a new adapter for this one."
        )
    filled: dict[str, Any] = {
        name: value for name, value in actual.items() if getattr(config, name) is None
    }
    if config.base_model_name_or_path is None:
        filled["base_model_name_or_path"] = getattr(model.config, "_name_or_path", None) or None
    return dataclasses.replace(config, **filled)


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on.

    That is where its weights are, except for a module that accelerate offloads
    (``device_map`` with ``"cpu"`` or ``"disk"`` entries): its weights wait on the ``meta``
    device and its accelerate hook loads them to its execution device for each call.
    """
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    device = next(module.parameters()).device
    if device.type == "meta":
        raise ValueError(
            f"The weights of {type(module).__name__} are on the meta device and no accelerate "
            "hook says where it runs. Load the VLM fully (no device='meta' / init_empty_weights "
            "without dispatch_model) before wrapping it."
        )
    return device


def _select(scores: torch.Tensor, config: CagulConfig, ordinal: int) -> torch.Tensor:
    """Indices of the tokens to rewrite among the ``scores`` of its sample's image ``ordinal``."""
    k = config.num_selected(len(scores))
    if config.token_selection == "random":
        # A fixed draw per image of a sample: the same whatever the batch around it, its
        # padding, or how many beams generate copies it into.
        generator = torch.Generator().manual_seed(ordinal)
        return torch.randperm(len(scores), generator=generator)[:k].to(scores.device)
    return torch.topk(scores, k, largest=config.token_selection == "highest").indices


class CagulModel(nn.Module):
    """A frozen vision-language model with a CAGUL unlearning adapter injected through hooks.

    Build one with `get_cagul_model` (a fresh adapter) or `CagulModel.from_pretrained` (a saved
    one). Call it and ``generate`` with exactly the inputs of the wrapped VLM. The VLM's weights
    are never modified: every one of its parameters is frozen, and `unload` gives it back.

    Args:
        model: A VLM of a supported family (see `hf_cagul.families.supported_families`).
        config: The adapter's configuration; its model fields are filled in or checked.
        adapter_name: Name of the adapter.
    """

    base_model: PreTrainedModel
    cagul_adapters: nn.ModuleDict
    # transformers' Trainer refuses to fit a quantized model (bitsandbytes...) unless trainable
    # adapters sit on it, which it reads from this PEFT attribute: a CagulModel is exactly that.
    _hf_peft_config_loaded = True

    def __init__(
        self, model: PreTrainedModel, config: CagulConfig, adapter_name: str = "default"
    ) -> None:
        super().__init__()
        family = detect_family(model)
        config = _bind_config(config, model, family)
        self.family = family
        self.base_model = model
        self.cagul_config: dict[str, CagulConfig] = {adapter_name: config}
        self.active_adapter = adapter_name
        self._scoring_layer()  # a family may refuse the configured layer: say so before any change
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        decoder = family.decoder(model)
        adapter = CagulAdapter(
            config.hidden_size or 0, config.discriminator_hidden_size, config.encoder_hidden_size
        ).to(execution_device(decoder.get_input_embeddings()))
        self.cagul_adapters = nn.ModuleDict({adapter_name: adapter})

        self._decoder = decoder
        self._forward_signature = inspect.signature(model.forward)
        self._call: ContextVar[_CallState | None] = ContextVar("cagul_call", default=None)
        self._in_truncated_pass: ContextVar[bool] = ContextVar("cagul_truncated", default=False)
        self._disabled: ContextVar[bool] = ContextVar("cagul_disabled", default=False)
        self._gate: ContextVar[bool | None] = ContextVar("cagul_gate", default=None)
        self._query_mask: ContextVar[torch.Tensor | None] = ContextVar("cagul_query", default=None)
        self._traces: ContextVar[list[ImageTrace] | None] = ContextVar("cagul_trace", default=None)

        text_config = family.text_config(model.config)
        self._original_attention = text_config._attn_implementation
        model.set_attn_implementation(
            {"text_config": scoring_implementation(self._original_attention)}
        )
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            model.register_forward_hook(self._after_model, always_call=True),
            decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
        ]

    # ------------------------------------------------------------------ public API

    def __getattr__(self, name: str) -> Any:
        """Fall back to the wrapped VLM (``config``, ``device``, ``generation_config``...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def active_adapter_module(self) -> CagulAdapter:
        """The discriminator and encoder of the active adapter."""
        return cast(CagulAdapter, self.cagul_adapters[self.active_adapter])

    @property
    def active_config(self) -> CagulConfig:
        """The configuration of the active adapter."""
        return self.cagul_config[self.active_adapter]

    def forward(self, *args: Any, query_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Run the wrapped VLM with the adapter active.

        Takes the VLM's own arguments. ``query_mask`` (``(batch, seq)``, optional) marks the
        prompt tokens whose attention ranks the visual tokens; by default every attended,
        non-visual token that is not an answer token (``labels == -100``) is one.
        """
        self._check_loaded()
        token = self._query_mask.set(query_mask)
        try:
            with _explain_placeholder_mismatch():
                return self.base_model(*args, **kwargs)
        finally:
            self._query_mask.reset(token)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` of the wrapped VLM; the adapter acts on the prefill step only."""
        self._check_loaded()
        with _explain_placeholder_mismatch():
            return cast(Any, self.base_model).generate(*args, **kwargs)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block, calls run the bare VLM (no copy: the hooks stand aside)."""
        token = self._disabled.set(True)
        try:
            yield
        finally:
            self._disabled.reset(token)

    @contextmanager
    def force_gate(self, flagged: bool) -> Iterator[None]:
        """Within the block, treat every image as flagged (``True``) or as not (``False``)."""
        token = self._gate.set(flagged)
        try:
            yield
        finally:
            self._gate.reset(token)

    @contextmanager
    def trace(self) -> Iterator[list[ImageTrace]]:
        """Collect an `ImageTrace` for every image the calls inside the block process."""
        records: list[ImageTrace] = []
        token = self._traces.set(records)
        try:
            yield records
        finally:
            self._traces.reset(token)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)`` of the VLM plus adapters."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Print the trainable parameter count, as PEFT does."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    def unload(self) -> PreTrainedModel:
        """Remove every hook, restore the attention implementation and return the bare VLM.

        The VLM's parameters stay frozen (``requires_grad=False``), as they were while wrapped.
        """
        self._check_loaded()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.base_model.set_attn_implementation({"text_config": self._original_attention})
        model = self.base_model
        self._unloaded = True
        return model

    # ------------------------------------------------------------------ persistence

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        evaluation: Mapping[str, float] | None = None,
        repo_id: str | None = None,
    ) -> Path:
        """Save the active adapter (config, safetensors weights, model card), atomically.

        Args:
            save_directory: Directory to write; an existing adapter there is replaced only
                once the new one is fully written.
            evaluation: Metrics to show in the model card's evaluation table.
            repo_id: Hub id to show in the model card's loading snippet.
        """
        adapter = self.active_adapter_module
        card = persistence.model_card(self.active_config, repo_id, evaluation)
        return persistence.save_adapter(
            save_directory, self.active_config, adapter.state_dict(), card
        )

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload CAGUL adapter",
        revision: str | None = None,
        evaluation: Mapping[str, float] | None = None,
    ) -> str:
        """Upload the active adapter to the Hub (creating the repo); returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self.save_pretrained(Path(tmp) / "adapter", evaluation, repo_id)
            return persistence.push_adapter(
                local, repo_id, private, token, commit_message, revision=revision
            )

    @classmethod
    def from_pretrained(
        cls,
        model: PreTrainedModel,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        revision: str | None = None,
        is_trainable: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
    ) -> CagulModel:
        """Wrap ``model`` with an adapter from a local directory or a Hub repo.

        Args:
            model: The VLM the adapter was fitted on.
            model_id: Adapter directory, or Hub repo id such as ``"org/forget-adapter"``.
            adapter_name: Name given to the loaded adapter.
            revision: Hub branch, tag or commit.
            is_trainable: Keep the adapter trainable (to continue fitting it).
            token: Hub token for private repos.
            cache_dir: Hub cache directory.
            local_files_only: Only use the local Hub cache (also on with ``HF_HUB_OFFLINE=1``).
        """
        config_path, weights_path = persistence.resolve_adapter_files(
            model_id, revision, token, cache_dir, local_files_only
        )
        config = persistence.load_config(config_path)
        state_dict = persistence.load_weights(weights_path)
        wrapped = cls(model, config, adapter_name)
        try:
            wrapped.cagul_adapters[adapter_name].load_state_dict(state_dict)
        except RuntimeError as err:
            wrapped.unload()
            raise ValueError(
                f"{weights_path} does not match its config ({config_path}): {err}"
            ) from err
        if not is_trainable:
            wrapped.cagul_adapters[adapter_name].requires_grad_(False).eval()
        return wrapped

    # ------------------------------------------------------------------ hooks

    def _check_loaded(self) -> None:
        if getattr(self, "_unloaded", False):
            raise RuntimeError(
                "This CagulModel was unloaded; use the VLM `unload()` returned, or wrap it again."
            )

    def _scoring_layer(self) -> int:
        """The decoder layer whose attention ranks the visual tokens (see `VLMFamily`)."""
        text_config = self.family.text_config(self.base_model.config)
        return self.family.scoring_layer(text_config, self.active_config.resolved_attention_layer)

    def _query_tokens(self, bound: Mapping[str, Any], input_ids: torch.Tensor) -> torch.Tensor:
        mask = self._query_mask.get()
        if mask is None:
            attention_mask = bound.get("attention_mask")
            mask = torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is not None and attention_mask.dim() == 2:
                # Continuing from a cache, the mask also covers the cached tokens: keep the
                # columns of this call's tokens.
                mask &= attention_mask[:, -input_ids.shape[1] :].bool().to(mask.device)
            labels = bound.get("labels")
            if labels is not None and labels.shape == input_ids.shape:
                mask &= labels == -100
        mask = mask.to(input_ids.device).bool() & (input_ids != self.active_config.image_token_id)
        if self.active_config.query_tokens == "last":
            last = torch.where(mask.any(dim=1), mask.long().cumsum(1).argmax(dim=1), -1)
            mask = torch.zeros_like(mask)
            rows = torch.nonzero(last >= 0).squeeze(-1)
            mask[rows, last[rows]] = True
        return mask

    def _before_model(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._call.set(None)
        if self._disabled.get():
            return
        bound = self._forward_signature.bind_partial(*args, **kwargs).arguments
        bound.update(bound.pop("kwargs", {}))
        input_ids = bound.get("input_ids")
        num_images = self.family.count_images(bound)
        config = self.active_config
        if input_ids is None:
            if num_images:
                raise ValueError(
                    "CAGUL finds visual tokens through input_ids, but this call passes images "
                    "with inputs_embeds only. Pass input_ids (as the processor returns them)."
                )
            return
        runs = self.family.image_runs(input_ids, config.image_token_id or -1)
        cache = next((bound[n] for n in _CACHE_ARGUMENTS if bound.get(n) is not None), None)
        continuing = cache is not None and cache.get_seq_length() > 0
        if continuing and len(runs) == 0:
            return  # a decode step of generate: the images were handled at prefill
        if num_images == 0:
            if len(runs) and not continuing:
                raise ValueError(
                    f"input_ids hold {len(runs)} image placeholder(s) (token id "
                    f"{config.image_token_id}) but the call passes no images. Pass the images "
                    "to the processor together with the text."
                )
            return
        if len(runs) != num_images:
            raise ValueError(
                f"The batch carries {num_images} image(s) but its text holds {len(runs)} "
                f"image placeholder(s) (runs of token id {config.image_token_id}). Every image "
                "needs exactly one placeholder in its sample's text (two placeholders written "
                "back to back merge into one run: put text between them); build the inputs "
                "with the model's processor, which expands each placeholder to the image's tokens."
            )
        self._call.set(_CallState(input_ids, runs, self._query_tokens(bound, input_ids)))

    def _after_model(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._call.set(None)

    def _before_decoder(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        state = self._call.get()
        if state is None or self._in_truncated_pass.get() or self._disabled.get():
            return None
        visual = self.family.visual_states(
            self.base_model.config, kwargs, state.input_ids, state.runs
        )
        if visual is None:
            return None
        self._call.set(None)  # one rewrite per call, even if the decoder runs again
        rewritten = self._rewrite(visual, state, args, kwargs)
        if rewritten is None:
            return None
        return args, rewritten

    # ------------------------------------------------------------------ the method

    def _rewrite(
        self,
        visual: VisualStates,
        state: _CallState,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The decoder's kwargs with the flagged images' selected tokens rewritten, or None."""
        config = self.active_config
        adapter = self.active_adapter_module
        adapter_param = next(adapter.parameters())
        embeds = visual.states  # (batch, n, hidden); in most families inputs_embeds itself
        runs = visual.spans.to(embeds.device)
        lengths = runs[:, 2] - runs[:, 1]
        num_images = len(runs)
        image_index = torch.repeat_interleave(
            torch.arange(num_images, device=embeds.device), lengths
        )
        first = torch.repeat_interleave(runs[:, 1] - (lengths.cumsum(0) - lengths), lengths)
        positions = torch.arange(len(image_index), device=embeds.device) + first
        samples = runs[:, 0][image_index]
        tokens = embeds[samples, positions].to(
            device=adapter_param.device, dtype=adapter_param.dtype
        )
        adapter_index = image_index.to(adapter_param.device)

        logits = adapter.discriminator(tokens, adapter_index, num_images)
        probabilities = torch.sigmoid(logits.detach().float()).cpu()
        forced = self._gate.get()
        if forced is None:
            flagged = probabilities > config.gate_threshold
        else:
            flagged = torch.full((num_images,), forced, dtype=torch.bool)
        traces = self._traces.get()
        image_traces = [
            ImageTrace(int(s), int(b), int(e), logit, float(p), bool(f))
            for (s, b, e), logit, p, f in zip(
                runs.tolist(), logits, probabilities, flagged, strict=True
            )
        ]
        if traces is not None:
            traces.extend(image_traces)
        if not bool(flagged.any()):
            return None

        scores = self._attention_scores(visual, state, args, kwargs)
        selected_rows = []
        image_samples = [trace.sample for trace in image_traces]
        for image in torch.nonzero(flagged).squeeze(-1).tolist():
            trace = image_traces[image]
            sample, start, end = trace.sample, trace.start, trace.end
            image_scores = scores[sample, start:end]
            ordinal = image_samples[:image].count(sample)
            chosen = _select(image_scores, config, ordinal).sort().values + start
            trace.scores = image_scores.detach().cpu()
            trace.selected = chosen.cpu()
            selected_rows.append(
                torch.stack(
                    [torch.full_like(chosen, sample), chosen, torch.full_like(chosen, image)]
                )
            )
        sample_sel, position_sel, image_sel = torch.cat(selected_rows, dim=1).to(embeds.device)
        context = adapter.image_context(tokens, adapter_index, num_images)
        new_tokens = adapter.encoder(
            embeds[sample_sel, position_sel].to(
                device=adapter_param.device, dtype=adapter_param.dtype
            ),
            context[image_sel.to(adapter_param.device)],
        )
        rewritten = embeds.clone()
        rewritten[sample_sel, position_sel] = new_tokens.to(
            device=embeds.device, dtype=embeds.dtype
        )
        return self.family.rewrite_extra_visual_inputs(
            self.family.with_visual_states(kwargs, visual, rewritten), sample_sel, position_sel
        )

    def _attention_scores(
        self,
        visual: VisualStates,
        state: _CallState,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Attention ``(batch, n)`` that each visual state receives from the query tokens."""
        embeds = visual.states
        query = state.query_mask.to(embeds.device)
        if visual.query_rows is not None:
            query = query & visual.query_rows.to(embeds.device)
        query = query.float()
        weights = query / query.sum(dim=1, keepdim=True).clamp_min(1.0)
        request = ScoreRequest(self._scoring_layer(), weights)
        truncated = {
            **self.family.with_visual_states(kwargs, visual, embeds.detach()),
            "use_cache": False,
        }
        for name in _CACHE_ARGUMENTS:
            cache = truncated.get(name)
            if cache is not None:
                # Continuing a cached conversation: the pass must see the past keys, but must
                # not append to the caller's cache.
                truncated[name] = copy.deepcopy(cache) if cache.get_seq_length() > 0 else None
        token = self._in_truncated_pass.set(True)
        try:
            with torch.no_grad(), request_scores(request):
                self._decoder(*args, **truncated)
        except TruncatedPassDone:
            pass
        finally:
            self._in_truncated_pass.reset(token)
        if request.scores is None:
            raise RuntimeError(
                f"Decoder layer {request.layer_idx} never called its attention function, so "
                "CAGUL got no attention scores. The attention implementation "
                f"{original_implementation(self._original_attention)!r} must go through "
                "transformers' AttentionInterface."
            )
        return request.scores[:, -embeds.shape[1] :]


def get_cagul_model(
    model: PreTrainedModel, config: CagulConfig, adapter_name: str = "default"
) -> CagulModel:
    """Inject a fresh CAGUL adapter into ``model`` (freezing it) and return the wrapper.

    A fresh adapter changes nothing: its gate starts closed and its encoder returns its input.
    Fit it with `hf_cagul.CagulTrainer`.
    """
    return CagulModel(model, config, adapter_name)

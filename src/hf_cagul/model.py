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

Several named adapters can be held and several active at once (``docs/adapters.md``): each
active adapter's discriminator scores every image; an image flagged by some of them is
rewritten by the one whose probability is highest (ties: the first in active order), with that
adapter's attention layer, token selection and encoder; an image flagged by none passes
untouched.

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
from torch.distributed.tensor import DTensor
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
from hf_cagul.config import CONFIG_NAME, CagulConfig
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
class _CallState:
    input_ids: torch.Tensor
    runs: torch.Tensor  # (num_images, 3): sample, start, end
    query_mask: torch.Tensor  # (batch, seq) bool: prompt text tokens, before `query_tokens`


def _check_adapter_name(name: object) -> str:
    """``name`` if it can name an adapter (and its subdirectory in `save_pretrained`)."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name != name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", os.sep))
    ):
        raise ValueError(
            f"Invalid adapter name {name!r}: use a non-empty string without path separators "
            "(a non-default adapter is saved in a subdirectory of that name)."
        )
    return name


def _last_query_token(mask: torch.Tensor) -> torch.Tensor:
    """Keep only the last True of each row of ``mask`` (``query_tokens="last"``)."""
    last = torch.where(mask.any(dim=1), mask.long().cumsum(1).argmax(dim=1), -1)
    only_last = torch.zeros_like(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    only_last[rows, last[rows]] = True
    return only_last


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


def _read_adapter(
    model_id: str | os.PathLike[str],
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
) -> tuple[CagulConfig, dict[str, torch.Tensor], Path]:
    """Config, weights and weights path of a saved adapter (local directory or Hub repo)."""
    config_path, weights_path = persistence.resolve_adapter_files(
        model_id, revision, token, cache_dir, local_files_only
    )
    config = persistence.load_config(config_path)
    return config, persistence.load_weights(weights_path), weights_path


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


def is_partitioned(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are spread over processes, so that this process holds
    only part of them: partitioned by DeepSpeed ZeRO-3, or sharded by FSDP2 (``DTensor``)."""
    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in module.parameters())


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

    Like a PEFT model it holds named adapters (`add_adapter`, `load_adapter`, `set_adapter`,
    `delete_adapter`); several can be active at once, one per forget request
    (``docs/adapters.md`` gives the composition rule).

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
        _check_adapter_name(adapter_name)
        family = detect_family(model)
        config = _bind_config(config, model, family)
        self.family = family
        self.base_model = model
        self._image_token_id = family.image_token_id(model.config)
        self.cagul_config: dict[str, CagulConfig] = {}
        self.cagul_adapters = nn.ModuleDict()
        self._active_adapters: list[str] = [adapter_name]
        self._scoring_layer(config)  # a family may refuse the layer: say so before any change
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        decoder = family.decoder(model)
        self._decoder = decoder
        self._install(adapter_name, config)

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
    def active_adapters(self) -> list[str]:
        """Names of the active adapters, in the order `set_adapter` gave them (a copy)."""
        return list(self._active_adapters)

    @property
    def active_adapter(self) -> str:
        """Name of the active adapter; an error while several are active (as in PEFT)."""
        if len(self._active_adapters) != 1:
            raise ValueError(
                f"{len(self._active_adapters)} adapters are active ({self._active_adapters}), so "
                "there is no single active adapter. Read `active_adapters`, or call "
                "`set_adapter(name)` to activate one."
            )
        return self._active_adapters[0]

    @property
    def active_adapter_module(self) -> CagulAdapter:
        """The discriminator and encoder of the active adapter (exactly one must be active)."""
        return cast(CagulAdapter, self.cagul_adapters[self.active_adapter])

    @property
    def active_config(self) -> CagulConfig:
        """The configuration of the active adapter (exactly one must be active)."""
        return self.cagul_config[self.active_adapter]

    # ------------------------------------------------------------------ named adapters

    def add_adapter(self, adapter_name: str, config: CagulConfig) -> None:
        """Add a fresh, trainable adapter (inactive until `set_adapter` names it).

        A fresh adapter changes nothing: its gate starts closed and its encoder is the identity.

        Raises:
            ValueError: If the name is taken or invalid, or ``config`` was bound to another model.
        """
        self._check_loaded()
        self._check_new_name(adapter_name)
        self._install(adapter_name, _bind_config(config, self.base_model, self.family))

    def load_adapter(
        self,
        model_id: str | os.PathLike[str],
        adapter_name: str,
        is_trainable: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
    ) -> None:
        """Load a saved adapter under ``adapter_name`` (inactive until `set_adapter` names it).

        Args:
            model_id: Adapter directory, or Hub repo id. For a directory written by
                `save_pretrained` with several adapters, adapter ``name`` lies in ``dir/name``.
            adapter_name: Name to give it; must not be taken.
            is_trainable: Keep it trainable (to continue fitting it); else frozen, eval mode.
            revision: Hub branch, tag or commit.
            token: Hub token for private repos.
            cache_dir: Hub cache directory.
            local_files_only: Only use the local Hub cache (also on with ``HF_HUB_OFFLINE=1``).

        Raises:
            ValueError: If the name is taken, the files are damaged, or the adapter was fitted
                on a different model. Nothing is added then.
        """
        self._check_loaded()
        self._check_new_name(adapter_name)
        config, state_dict, weights_path = _read_adapter(
            model_id, revision, token, cache_dir, local_files_only
        )
        self._install(
            adapter_name,
            _bind_config(config, self.base_model, self.family),
            state_dict,
            weights_path,
            is_trainable,
        )

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Activate one adapter, or several (a list: they compose, see ``docs/adapters.md``).

        The order of a list matters only for ties between gate probabilities: the first wins.
        """
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if not names:
            raise ValueError("set_adapter needs at least one adapter name.")
        for name in names:
            self._check_known(name)
        if len(set(names)) != len(names):
            raise ValueError(f"set_adapter got a name twice: {names}.")
        self._active_adapters = names

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an inactive adapter and free its modules.

        Raises:
            ValueError: If the name is unknown, the adapter is active (activate others first
                with `set_adapter`), or it is the last one (`unload` gives the bare VLM back).
        """
        self._check_known(adapter_name)
        if len(self.cagul_adapters) == 1:
            raise ValueError(
                f"{adapter_name!r} is the only adapter; a CagulModel holds at least one. Call "
                "`unload()` to get the bare VLM back instead."
            )
        if adapter_name in self._active_adapters:
            others = [name for name in self.cagul_adapters if name != adapter_name]
            raise ValueError(
                f"{adapter_name!r} is active ({self._active_adapters}); activate others first, "
                f"e.g. `set_adapter({others[0]!r})`, then delete it."
            )
        del self.cagul_adapters[adapter_name]
        del self.cagul_config[adapter_name]

    def merge_adapters(self, adapter_names: list[str], new_name: str) -> None:
        """Refused: separately fitted CAGUL adapters cannot be merged into one soundly.

        Each discriminator and encoder learned its own features; averaging their weights gives
        a gate that flags neither forget set and an encoder fitted to neither. The only sound
        single adapter would be their composition, which is what activating them together
        already is (``set_adapter(adapter_names)``; `save_pretrained` saves them all). To get
        one adapter for several forget sets, fit one on their union. See ``docs/adapters.md``.

        Raises:
            ValueError: Always (after checking the names, so a typo is reported as such).
        """
        for name in adapter_names:
            self._check_known(name)
        raise ValueError(
            f"Cannot merge {adapter_names} into {new_name!r}: separately fitted CAGUL adapters "
            "do not merge (averaged discriminators flag neither forget set). Activate them "
            f"together instead, `set_adapter({adapter_names!r})`, which composes them and which "
            "save_pretrained saves as one directory; or fit one adapter on the union of their "
            "forget sets. See docs/adapters.md."
        )

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self.cagul_adapters:
            raise ValueError(
                f"No adapter named {adapter_name!r}; this model holds {list(self.cagul_adapters)}."
                " Add one with `add_adapter` or `load_adapter`."
            )

    def _check_whole(self, adapter_name: str) -> None:
        """Refuse to save an adapter whose weights are spread over processes (ZeRO-3, FSDP)."""
        if is_partitioned(self.cagul_adapters[adapter_name]):
            raise ValueError(
                f"Adapter {adapter_name!r} is partitioned over the training processes "
                "(DeepSpeed ZeRO-3 or FSDP), so this process holds only part of it. Save it "
                "with `trainer.save_model(directory)` on every process: the Trainer gathers "
                "it and the main process writes it."
            )

    def _check_new_name(self, adapter_name: str) -> None:
        _check_adapter_name(adapter_name)
        if adapter_name in self.cagul_adapters:
            raise ValueError(
                f"An adapter named {adapter_name!r} already exists; pick another name, or "
                f"`delete_adapter({adapter_name!r})` first."
            )

    def _install(
        self,
        adapter_name: str,
        config: CagulConfig,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        source: Path | None = None,
        is_trainable: bool = True,
    ) -> None:
        """Build the modules of a bound ``config`` (with ``state_dict``) and register them."""
        self._scoring_layer(config)  # a family may refuse the layer: before anything is added
        adapter = CagulAdapter(
            config.hidden_size or 0, config.discriminator_hidden_size, config.encoder_hidden_size
        ).to(execution_device(self._decoder.get_input_embeddings()))
        if state_dict is not None:
            try:
                adapter.load_state_dict(state_dict)
            except RuntimeError as err:
                raise ValueError(
                    f"{source} does not match its config ({CONFIG_NAME}): {err}"
                ) from err
        if not is_trainable:
            adapter.requires_grad_(False).eval()
        self.cagul_config[adapter_name] = config
        self.cagul_adapters[adapter_name] = adapter

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
        selected_adapters: list[str] | None = None,
    ) -> Path:
        """Save adapters (config, safetensors weights, model card), each atomically.

        As in PEFT, the adapter named ``"default"`` goes into ``save_directory`` itself and any
        other into ``save_directory / name``; load one back with
        ``load_adapter(save_directory / name, name)``.

        Args:
            save_directory: Directory to write; an existing adapter there is replaced only
                once the new one is fully written.
            evaluation: Metrics to show in the model cards' evaluation table.
            repo_id: Hub id to show in the model cards' loading snippet.
            selected_adapters: Names of the adapters to save (default: all of them).
        """
        self._check_loaded()
        names = list(self.cagul_adapters) if selected_adapters is None else selected_adapters
        if not names:
            raise ValueError("selected_adapters is empty: name at least one adapter to save.")
        for name in names:
            self._check_known(name)
        root = Path(save_directory)
        for name in names:
            self.save_adapter(root if name == "default" else root / name, name, evaluation, repo_id)
        return root

    def save_adapter(
        self,
        save_directory: str | os.PathLike[str],
        adapter_name: str | None = None,
        evaluation: Mapping[str, float] | None = None,
        repo_id: str | None = None,
    ) -> Path:
        """Save one adapter's files directly into ``save_directory``, atomically.

        Args:
            save_directory: Directory to write (an adapter there is replaced once the new one
                is fully written; other files are kept).
            adapter_name: Adapter to save (default: the active one).
            evaluation: Metrics to show in the model card's evaluation table.
            repo_id: Hub id to show in the model card's loading snippet.
        """
        name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(name)
        self._check_whole(name)
        config = self.cagul_config[name]
        card = persistence.model_card(config, repo_id, evaluation)
        return persistence.save_adapter(
            save_directory, config, self.cagul_adapters[name].state_dict(), card
        )

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload CAGUL adapter",
        revision: str | None = None,
        evaluation: Mapping[str, float] | None = None,
        adapter_name: str | None = None,
    ) -> str:
        """Upload one adapter (default: the active one) to the Hub, creating the repo.

        Returns the commit URL. One repo holds one adapter; push several to several repos.
        """
        with tempfile.TemporaryDirectory() as tmp:
            local = self.save_adapter(Path(tmp) / "adapter", adapter_name, evaluation, repo_id)
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

        Further adapters are added with `load_adapter` (for a directory `save_pretrained`
        wrote with several: ``load_adapter(directory / name, name)``).

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
        config, state_dict, weights_path = _read_adapter(
            model_id, revision, token, cache_dir, local_files_only
        )
        wrapped = cls(model, config, adapter_name)
        try:  # replaces the fresh modules with the saved ones
            wrapped._install(
                adapter_name,
                wrapped.cagul_config[adapter_name],
                state_dict,
                weights_path,
                is_trainable,
            )
        except ValueError:
            wrapped.unload()
            raise
        return wrapped

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
        return mask.to(input_ids.device).bool() & (input_ids != self._image_token_id)

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
        image_token_id = self._image_token_id
        if input_ids is None:
            if num_images:
                raise ValueError(
                    "CAGUL finds visual tokens through input_ids, but this call passes images "
                    "with inputs_embeds only. Pass input_ids (as the processor returns them)."
                )
            return
        runs = self.family.image_runs(input_ids, image_token_id)
        cache = next((bound[n] for n in _CACHE_ARGUMENTS if bound.get(n) is not None), None)
        continuing = cache is not None and cache.get_seq_length() > 0
        if continuing and len(runs) == 0:
            return  # a decode step of generate: the images were handled at prefill
        if num_images == 0:
            if len(runs) and not continuing:
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
        names = self._active_adapters
        adapters = [cast(CagulAdapter, self.cagul_adapters[name]) for name in names]
        configs = [self.cagul_config[name] for name in names]
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
        visual_tokens = embeds[samples, positions]

        def as_input(adapter: CagulAdapter, tensor: torch.Tensor) -> torch.Tensor:
            parameter = next(adapter.parameters())
            return tensor.to(device=parameter.device, dtype=parameter.dtype)

        logits = []
        for adapter in adapters:
            tokens = as_input(adapter, visual_tokens)
            logits.append(adapter.discriminator(tokens, image_index.to(tokens.device), num_images))
        probabilities = torch.stack([torch.sigmoid(lg.detach().float()).cpu() for lg in logits])
        forced = self._gate.get()
        if forced is None:
            thresholds = torch.tensor([config.gate_threshold for config in configs])
            flags = probabilities > thresholds.unsqueeze(1)
        else:
            flags = torch.full(probabilities.shape, forced, dtype=torch.bool)
        flagged = flags.any(dim=0)
        # The rewriting adapter: the most confident among those that flag the image; argmax
        # keeps the first of equal maxima, i.e. the earlier adapter in active order.
        chosen = torch.where(
            flagged,
            probabilities.masked_fill(~flags, -1.0).argmax(dim=0),
            probabilities.argmax(dim=0),
        )
        image_traces = [
            ImageTrace(
                sample=int(s),
                start=int(b),
                end=int(e),
                logit=logits[a][image],
                probability=float(probabilities[a, image]),
                flagged=bool(flagged[image]),
                adapter=names[a],
                probabilities=dict(zip(names, probabilities[:, image].tolist(), strict=True)),
            )
            for image, ((s, b, e), a) in enumerate(zip(runs.tolist(), chosen.tolist(), strict=True))
        ]
        traces = self._traces.get()
        if traces is not None:
            traces.extend(image_traces)
        if not bool(flagged.any()):
            return None

        rewritten = embeds.clone()
        image_samples = [trace.sample for trace in image_traces]
        scores_by_query: dict[tuple[int, str], torch.Tensor] = {}
        rewritten_samples: list[torch.Tensor] = []
        rewritten_positions: list[torch.Tensor] = []
        for a, (adapter, config) in enumerate(zip(adapters, configs, strict=True)):
            images = torch.nonzero(flagged & (chosen == a)).squeeze(-1).tolist()
            if not images:
                continue
            key = (self._scoring_layer(config), config.query_tokens)
            if key not in scores_by_query:
                scores_by_query[key] = self._attention_scores(visual, state, config, args, kwargs)
            scores = scores_by_query[key]
            selected_rows = []
            for image in images:
                trace = image_traces[image]
                sample, start, end = trace.sample, trace.start, trace.end
                image_scores = scores[sample, start:end]
                ordinal = image_samples[:image].count(sample)
                chosen_tokens = _select(image_scores, config, ordinal).sort().values + start
                trace.scores = image_scores.detach().cpu()
                trace.selected = chosen_tokens.cpu()
                selected_rows.append(
                    torch.stack(
                        [
                            torch.full_like(chosen_tokens, sample),
                            chosen_tokens,
                            torch.full_like(chosen_tokens, image),
                        ]
                    )
                )
            sample_sel, position_sel, image_sel = torch.cat(selected_rows, dim=1).to(embeds.device)
            tokens = as_input(adapter, visual_tokens)
            context = adapter.image_context(tokens, image_index.to(tokens.device), num_images)
            new_tokens = adapter.encoder(
                as_input(adapter, embeds[sample_sel, position_sel]),
                context[image_sel.to(context.device)],
            )
            rewritten[sample_sel, position_sel] = new_tokens.to(
                device=embeds.device, dtype=embeds.dtype
            )
            rewritten_samples.append(sample_sel)
            rewritten_positions.append(position_sel)
        return self.family.rewrite_extra_visual_inputs(
            self.family.with_visual_states(kwargs, visual, rewritten),
            torch.cat(rewritten_samples),
            torch.cat(rewritten_positions),
        )

    def _attention_scores(
        self,
        visual: VisualStates,
        state: _CallState,
        config: CagulConfig,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Attention ``(batch, n)`` that each visual state receives from ``config``'s queries."""
        embeds = visual.states
        query = state.query_mask
        if config.query_tokens == "last":
            query = _last_query_token(query)
        query = query.to(embeds.device)
        if visual.query_rows is not None:
            query = query & visual.query_rows.to(embeds.device)
        query = query.float()
        weights = query / query.sum(dim=1, keepdim=True).clamp_min(1.0)
        request = ScoreRequest(self._scoring_layer(config), weights)
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

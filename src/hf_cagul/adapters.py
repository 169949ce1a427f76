"""Named adapters: the registry and persistence half of `hf_cagul.CagulModel`.

As in PEFT, a model holds named adapters (`add_adapter`, `load_adapter`, `set_adapter`,
`delete_adapter`), several of which may be active at once (``docs/adapters.md`` gives the
composition rule), and saves them to a directory or the Hub. `NamedAdapters` is that half; the
hook lifecycle and the routing of each call live in `hf_cagul.model`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_cagul import persistence, vetting
from hf_cagul.config import CONFIG_NAME, CagulConfig
from hf_cagul.devices import execution_device, is_partitioned
from hf_cagul.families import VLMFamily
from hf_cagul.modules import CagulAdapter

__all__ = ["NamedAdapters", "SavedAdapter", "bind_config", "check_adapter_name"]

_M = TypeVar("_M", bound="NamedAdapters")


@dataclasses.dataclass
class SavedAdapter:
    """An adapter read from disk or the Hub, not yet installed.

    Attributes:
        config: Its configuration.
        state_dict: Its weights.
        source: The weights file, for messages.
    """

    config: CagulConfig
    state_dict: dict[str, torch.Tensor]
    source: Path

    @classmethod
    def read(
        cls,
        model_id: str | os.PathLike[str],
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
    ) -> SavedAdapter:
        """Read the adapter in a local directory or a Hub repo, vetted as untrusted.

        Its sizes are checked against its weights' header and sane bounds before any tensor is
        read (`hf_cagul.vetting`), then its weights' values are checked to be finite.

        Raises:
            ValueError: If the config or the weights are damaged, absurd or disagree.
        """
        config_path, weights_path = persistence.resolve_adapter_files(
            model_id, revision, token, cache_dir, local_files_only
        )
        config = persistence.load_config(config_path)
        vetting.check_weights_file(config, weights_path)  # before any tensor is allocated
        state_dict = persistence.load_weights(weights_path)
        vetting.check_finite(state_dict, weights_path)
        return cls(config, state_dict, weights_path)


def check_adapter_name(name: object) -> str:
    """``name`` if it can name an adapter (and its subdirectory in `save_pretrained`).

    Raises:
        ValueError: For an empty name, one with surrounding blanks or path separators.
    """
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


def bind_config(config: CagulConfig, model: PreTrainedModel, family: VLMFamily) -> CagulConfig:
    """Fill the config's model fields, or check them when the config already has them.

    Raises:
        ValueError: If the config was fitted on a model of another shape.
    """
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
    if config.revision is None:
        # transformers records the commit a checkpoint was downloaded at.
        filled["revision"] = getattr(model.config, "_commit_hash", None) or None
    return dataclasses.replace(config, **filled)


class NamedAdapters(nn.Module):
    """The named adapters of a model and their persistence (see the module docstring).

    Subclasses set ``family``, ``base_model`` and ``_decoder`` before calling `_install`, and
    implement `_check_layer` (a family may refuse an attention layer).
    """

    family: VLMFamily
    base_model: PreTrainedModel
    cagul_adapters: nn.ModuleDict
    cagul_config: dict[str, CagulConfig]
    _active_adapters: list[str]
    _decoder: Any  # the language model (a PreTrainedModel in every family)

    def _check_layer(self, config: CagulConfig) -> None:
        raise NotImplementedError

    def _check_loaded(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ active adapters

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
        """The gate and encoder of the active adapter (exactly one must be active)."""
        return cast(CagulAdapter, self.cagul_adapters[self.active_adapter])

    @property
    def active_config(self) -> CagulConfig:
        """The configuration of the active adapter (exactly one must be active)."""
        return self.cagul_config[self.active_adapter]

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

    # ------------------------------------------------------------------ the registry

    def add_adapter(self, adapter_name: str, config: CagulConfig) -> None:
        """Add a fresh, trainable adapter (inactive until `set_adapter` names it).

        A fresh adapter changes nothing: its gate starts closed and its encoder is the identity.

        Raises:
            ValueError: If the name is taken or invalid, or ``config`` was bound to another model.
        """
        self._check_loaded()
        self._check_new_name(adapter_name)
        self._install(adapter_name, bind_config(config, self.base_model, self.family))

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
        saved = SavedAdapter.read(model_id, revision, token, cache_dir, local_files_only)
        self._install(
            adapter_name,
            bind_config(saved.config, self.base_model, self.family),
            saved,
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

        Each gate and encoder learned its own features; averaging their weights gives a gate
        that flags neither forget set and an encoder fitted to neither. The only sound single
        adapter would be their composition, which is what activating them together already is
        (``set_adapter(adapter_names)``; `save_pretrained` saves them all). To get one adapter
        for several forget sets, fit one on their union. See ``docs/adapters.md``.

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

    def _check_new_name(self, adapter_name: str) -> None:
        check_adapter_name(adapter_name)
        if adapter_name in self.cagul_adapters:
            raise ValueError(
                f"An adapter named {adapter_name!r} already exists; pick another name, or "
                f"`delete_adapter({adapter_name!r})` first."
            )

    def _install(
        self,
        adapter_name: str,
        config: CagulConfig,
        saved: SavedAdapter | None = None,
        is_trainable: bool = True,
    ) -> None:
        """Build the modules of a bound ``config`` (with ``saved`` weights) and register them."""
        self._check_layer(config)  # a family may refuse the layer: before anything is added
        adapter = CagulAdapter.from_config(config).to(
            execution_device(self._decoder.get_input_embeddings())
        )
        if saved is not None:
            try:
                adapter.load_state_dict(saved.state_dict)
            except RuntimeError as err:
                raise ValueError(
                    f"{saved.source} does not match its config ({CONFIG_NAME}): {err}"
                ) from err
        if not is_trainable:
            adapter.requires_grad_(False).eval()
        self.cagul_config[adapter_name] = config
        self.cagul_adapters[adapter_name] = adapter

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
        state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save one adapter's files directly into ``save_directory``, atomically.

        Args:
            save_directory: Directory to write (an adapter there is replaced once the new one
                is fully written; other files are kept).
            adapter_name: Adapter to save (default: the active one).
            evaluation: Metrics to show in the model card's evaluation table.
            repo_id: Hub id to show in the model card's loading snippet.
            state_dict: The adapter's weights when this process holds only part of them
                (gathered by the Trainer under FSDP or DeepSpeed ZeRO-3).

        Raises:
            ValueError: If the adapter is partitioned over processes and no ``state_dict`` is
                given.
        """
        name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(name)
        if state_dict is None:
            if is_partitioned(self.cagul_adapters[name]):
                raise ValueError(
                    f"Adapter {name!r} is partitioned over the training processes (DeepSpeed "
                    "ZeRO-3 or FSDP), so this process holds only part of it. Save it with "
                    "`trainer.save_model(directory)` on every process: the Trainer gathers it "
                    "and the main process writes it."
                )
            state_dict = cast(CagulAdapter, self.cagul_adapters[name]).state_dict()
        config = self.cagul_config[name]
        card = persistence.model_card(config, repo_id, evaluation)
        return persistence.save_adapter(save_directory, config, state_dict, card)

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
        cls: type[_M],
        model: PreTrainedModel,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        revision: str | None = None,
        is_trainable: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
    ) -> _M:
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

        Raises:
            ValueError: If the files are damaged or the adapter was fitted on another model;
                ``model`` is then left as it was (no hook, nothing frozen anew).
        """
        saved = SavedAdapter.read(model_id, revision, token, cache_dir, local_files_only)
        return cls(model, saved.config, adapter_name, saved=saved, is_trainable=is_trainable)

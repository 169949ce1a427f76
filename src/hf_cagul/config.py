"""`CagulConfig`: every choice a CAGUL adapter makes, saved as ``cagul_config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hf_cagul.version import __version__

CONFIG_NAME = "cagul_config.json"
WEIGHTS_NAME = "cagul_adapter.safetensors"

QUERY_TOKEN_CHOICES = ("prompt", "last")
TOKEN_SELECTION_CHOICES = ("lowest", "random", "highest")
GATE_STATE_TOKEN_CHOICES = ("last_prompt", "visual", "both")
DEFAULT_GATE = "visual_tokens"
"""The paper's gate (`hf_cagul.gates.ForgetDiscriminator`); adapters saved without a gate use it."""
# Written at injection; a saved adapter without them cannot be checked against a model.
BOUND_FIELDS = ("family", "hidden_size", "image_token_id", "num_hidden_layers")
MAX_CONFIG_BYTES = 1 << 20
"""Largest ``cagul_config.json`` read (1 MiB: a config is under 2 KiB)."""
MAX_GATE_MEMBERS = 16
"""Most copies an ensemble gate (`CagulConfig.gate_members`) holds."""


@dataclass
class CagulConfig:
    """Configuration of a CAGUL adapter (Cross-Modal Attention Guided Unlearning).

    The paper (arXiv 2510.07567) fixes the mechanism: a discriminator flags images of subjects
    to forget, text-to-visual attention ranks the image's visual tokens, and an encoder rewrites
    the least important ones. It leaves the numbers open; the defaults below are this project's
    choices, justified by its synthetic benchmark (see ``docs/concepts.md``).

    Fields marked "filled in at injection" describe the VLM the adapter was fitted on. They are
    written by `get_cagul_model` and checked by `CagulModel.from_pretrained`, so an adapter can
    never be loaded silently into a model it does not fit.

    Args:
        base_model_name_or_path: Name or path of the VLM (filled in at injection).
        revision: Commit of the VLM on the Hub, when it was loaded from there (filled in at
            injection from the model config's ``_commit_hash``).
        family: VLM family key from `hf_cagul.families` (filled in at injection).
        hidden_size: Hidden size of the language model (filled in at injection).
        image_token_id: Id of the image placeholder token (filled in at injection).
        num_hidden_layers: Depth of the language model (filled in at injection).
        attention_layer: Decoder layer whose text-to-visual attention ranks the visual tokens.
            ``None`` picks ``num_hidden_layers // 4``: early layers are cheap to reach and
            already route text to image.
        query_tokens: Which text tokens form the query: ``"prompt"`` averages over every prompt
            token that is not a visual token (answer tokens excluded during training), ``"last"``
            uses the last prompt token only.
        token_selection: Which visual tokens are rewritten: ``"lowest"`` attention (CAGUL), or
            ``"random"`` / ``"highest"`` for ablations.
        token_ratio: Fraction of each flagged image's visual tokens that the encoder rewrites.
        num_tokens: A fixed number of tokens to rewrite per image; overrides ``token_ratio``.
        gate: Name of the gate design (a class registered in `hf_cagul.gates`):
            ``"visual_tokens"`` is the paper's discriminator over the projected visual tokens,
            ``"language_state"`` reads the frozen language model's hidden state,
            ``"visual_and_language_state"`` reads both.
        gate_layer: Decoder layer whose output a gate that reads the language model's state
            reads (``None``: the last layer).
        gate_state_tokens: Where in that layer's output such a gate reads: ``"last_prompt"``,
            the last prompt token of the image's sample; ``"visual"``, the mean over the image's
            own visual tokens (one state per image, and the same for every question where a
            causal prompt puts the image before the question; PaliGemma's prefix attends both
            ways); ``"both"``, the two side by side (a state twice as wide). ``"visual"`` and
            ``"both"`` need a family whose visual tokens are positions of the sequence (not
            Mllama's cross-attention).
        gate_members: How many copies of the gate design the gate is (at most
            `MAX_GATE_MEMBERS`): above 1, an ensemble (`hf_cagul.gates.GateEnsemble`) whose
            probability is the mean of its members', each initialised and fitted on its own
            (with ``gate_fit="apart"``). Each member costs the design's pass at serving.
        encoder_hidden_size: Width of the token encoder's hidden layer.
        discriminator_hidden_size: Width of the discriminator's hidden layer.
        gate_threshold: Probability above which the discriminator flags an image.
        gate_calibration: How ``gate_threshold`` was calibrated, when `CagulTrainer` set it
            for a target false-positive rate (``gate_target_fpr``); None otherwise. Keys:
            ``target_fpr``; ``threshold`` (the value set); ``fpr``, the false-positive rate at
            it on ``heldout_negative_photos`` negative photos held out before fitting (never
            fitted on, nor augmented), among them every photo of ``heldout_negative_subjects``
            people held out whole (``heldout_by``: ``"subject"``, or ``"photo"`` when photos
            were held out one by one);
            ``tpr``, the true-positive rate at it on ``heldout_forget_images`` fresh augmented
            variants of the forget photos (not fitted on, but of photos that were); ``seed``.
        cagul_version: Version of hf_cagul that wrote the config.
    """

    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"cli": False, "help": "Name or path of the VLM (filled in at injection)."},
    )
    revision: str | None = field(
        default=None,
        metadata={"cli": False, "help": "Hub commit of the VLM (filled in at injection)."},
    )
    family: str | None = field(
        default=None,
        metadata={"cli": False, "help": "VLM family key from hf_cagul.families (filled in)."},
    )
    hidden_size: int | None = field(
        default=None,
        metadata={"cli": False, "help": "Hidden size of the language model (filled in)."},
    )
    image_token_id: int | None = field(
        default=None,
        metadata={"cli": False, "help": "Id of the image placeholder token (filled in)."},
    )
    num_hidden_layers: int | None = field(
        default=None,
        metadata={
            "cli": False,
            "help": "Number of decoder layers of the language model (filled in).",
        },
    )
    attention_layer: int | None = field(
        default=None,
        metadata={
            "help": "Decoder layer whose text->visual attention ranks visual tokens. "
            "None: num_hidden_layers // 4."
        },
    )
    query_tokens: Literal["prompt", "last"] = field(
        default="prompt",
        metadata={
            "help": "Query text tokens: 'prompt' (mean over every prompt text token) or 'last' "
            "(the last prompt token)."
        },
    )
    token_selection: Literal["lowest", "random", "highest"] = field(
        default="lowest",
        metadata={
            "help": "Rewrite the 'lowest'-attention tokens (CAGUL), or 'random' / 'highest' "
            "ones (ablations)."
        },
    )
    token_ratio: float = field(
        default=0.5,
        metadata={"help": "Fraction (0, 1] of a flagged image's visual tokens to rewrite."},
    )
    num_tokens: int | None = field(
        default=None,
        metadata={"help": "Fixed number of visual tokens to rewrite per image; overrides ratio."},
    )
    gate: str = field(
        default=DEFAULT_GATE,
        metadata={
            "help": "Gate design, by its registered name (hf_cagul.gates): 'visual_tokens' is "
            "the paper's discriminator over the projected visual tokens."
        },
    )
    gate_layer: int | None = field(
        default=None,
        metadata={
            "help": "Decoder layer whose output a gate reading the language model's state "
            "reads (None: the last layer)."
        },
    )
    gate_state_tokens: Literal["last_prompt", "visual", "both"] = field(
        default="last_prompt",
        metadata={
            "help": "Where a gate reading the language model's state reads it: 'last_prompt' "
            "(the last prompt token of the image's sample), 'visual' (the mean of the image's "
            "own visual tokens) or 'both' (side by side)."
        },
    )
    gate_members: int = field(
        default=1,
        metadata={
            "help": "Copies of the gate design fitted on their own and averaged (an ensemble "
            "when above 1)."
        },
    )
    encoder_hidden_size: int = field(
        default=256, metadata={"help": "Hidden width of the token encoder."}
    )
    discriminator_hidden_size: int = field(
        default=256, metadata={"help": "Hidden width of the forget discriminator."}
    )
    gate_threshold: float = field(
        default=0.5,
        metadata={"help": "Discriminator probability above which an image is rewritten."},
    )
    gate_calibration: dict[str, Any] | None = field(
        default=None,
        metadata={
            "cli": False,
            "help": "How gate_threshold was calibrated for a target FPR (filled in by training).",
        },
    )
    cagul_version: str = field(
        default=__version__,
        metadata={"cli": False, "help": "Version of hf_cagul that wrote this config."},
    )

    def __post_init__(self) -> None:
        if self.query_tokens not in QUERY_TOKEN_CHOICES:
            raise ValueError(
                f"query_tokens={self.query_tokens!r} is not supported; "
                f"choose one of {QUERY_TOKEN_CHOICES}."
            )
        if self.gate_state_tokens not in GATE_STATE_TOKEN_CHOICES:
            raise ValueError(
                f"gate_state_tokens={self.gate_state_tokens!r} is not supported; "
                f"choose one of {GATE_STATE_TOKEN_CHOICES}."
            )
        if self.token_selection not in TOKEN_SELECTION_CHOICES:
            raise ValueError(
                f"token_selection={self.token_selection!r} is not supported; "
                f"choose one of {TOKEN_SELECTION_CHOICES}."
            )
        if not 0.0 < self.token_ratio <= 1.0:
            raise ValueError(
                f"token_ratio={self.token_ratio} must lie in (0, 1]: it is the fraction of an "
                "image's visual tokens that the encoder rewrites."
            )
        if self.num_tokens is not None and self.num_tokens < 1:
            raise ValueError(f"num_tokens={self.num_tokens} must be >= 1 (or None to use ratio).")
        if not 0.0 < self.gate_threshold < 1.0:
            raise ValueError(
                f"gate_threshold={self.gate_threshold} must lie strictly between 0 and 1."
            )
        if not 1 <= self.gate_members <= MAX_GATE_MEMBERS:
            raise ValueError(
                f"gate_members={self.gate_members} must lie in 1..{MAX_GATE_MEMBERS}: it is the "
                "number of gate copies averaged (1: a single gate)."
            )
        for name in ("encoder_hidden_size", "discriminator_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer.")
        for name in ("attention_layer", "gate_layer"):
            layer = getattr(self, name)
            if layer is not None and layer < 0:
                raise ValueError(f"{name}={layer} must be >= 0 (or None).")
            depth = self.num_hidden_layers
            if layer is not None and depth is not None and layer >= depth:
                raise ValueError(
                    f"{name}={layer} does not exist: the language model has {depth} layers "
                    f"(valid: 0..{depth - 1})."
                )

    @property
    def resolved_attention_layer(self) -> int:
        """The attention layer in use, once the config knows the model's depth."""
        if self.attention_layer is not None:
            return self.attention_layer
        if self.num_hidden_layers is None:
            raise ValueError("The config has not been bound to a model yet (num_hidden_layers).")
        return self.num_hidden_layers // 4

    @property
    def gate_state_size(self) -> int:
        """Width of the language state a gate reads (`gate_state_tokens`), once the config
        knows the model's hidden size (0 before)."""
        return (self.hidden_size or 0) * (2 if self.gate_state_tokens == "both" else 1)

    @property
    def resolved_gate_layer(self) -> int:
        """The layer a gate reading the language model's state reads, once the config knows
        the model's depth."""
        if self.gate_layer is not None:
            return self.gate_layer
        if self.num_hidden_layers is None:
            raise ValueError("The config has not been bound to a model yet (num_hidden_layers).")
        return self.num_hidden_layers - 1

    def num_selected(self, num_visual_tokens: int) -> int:
        """How many of an image's ``num_visual_tokens`` tokens are rewritten."""
        if self.num_tokens is not None:
            return min(self.num_tokens, num_visual_tokens)
        return max(1, min(num_visual_tokens, round(self.token_ratio * num_visual_tokens)))

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CagulConfig:
        """Build a config from a dict, refusing keys this version does not know and values of
        another type than their field's (``"256"`` or ``256.0`` for an int, ``true`` for a
        number)."""
        if not isinstance(data, dict):
            raise ValueError(f"A CAGUL config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"cagul_config.json has fields this hf_cagul ({__version__}) does not know: "
                f"{unknown}. It was written by hf_cagul {data.get('cagul_version', '?')}; "
                "upgrade with `pip install -U hf_cagul` to load it."
            )
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _is_instance(value, hints[name]):
                raise ValueError(
                    f"Invalid cagul_config.json: {name} must be {_type_name(hints[name])}, got "
                    f"{type(value).__name__} {_preview(value)}."
                )
        return cls(**data)

    def save(self, save_directory: str | os.PathLike[str]) -> str:
        """Write ``cagul_config.json`` into ``save_directory``; returns the file path."""
        path = os.path.join(os.fspath(save_directory), CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> CagulConfig:
        """Read a config from a ``cagul_config.json`` file, with errors that name the file.

        A file over `MAX_CONFIG_BYTES` is refused unread.
        """
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"{path} is {size:,d} bytes, too large for a CAGUL config (at most "
                f"{MAX_CONFIG_BYTES:,d}); re-save the adapter."
            )
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, too deep, huge ints
            raise ValueError(f"{path} is not valid JSON ({err}); re-save the adapter.") from err
        try:
            config = cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        missing = [name for name in BOUND_FIELDS if getattr(config, name) is None]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}: a saved adapter records the model it was fitted on. "
                "Re-save it with `CagulModel.save_pretrained`."
            )
        return config


def _is_instance(value: object, hint: Any) -> bool:
    """Whether a JSON ``value`` has the type a field's ``hint`` names (an int is no bool, but
    is a float; a `Literal` takes the type of its choices, which ``__post_init__`` checks)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(choice) for choice in typing.get_args(hint))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``hint`` as a message shows it: ``int | None``, ``Literal['prompt', 'last']``."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "")


def _preview(value: object) -> str:
    """A short ``repr`` of an untrusted value."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."

"""Everything that differs between VLM families, and nothing else.

`hf_cagul.model` asks a `VLMFamily` where the language model is, what its config says
(hidden size, depth, image token), how many images a batch carries, which token positions
belong to which image, and where the language model receives the visual tokens (`VisualStates`:
``inputs_embeds`` in most families, Mllama's ``cross_attention_states``), which attention layer
ranks them, and what else to rewrite with them (Qwen3-VL's deepstack features). Adding a family
means adding one `VLMFamily` here (see ``docs/families.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PretrainedConfig, PreTrainedModel

from hf_cagul.inflight import CACHE_ARGUMENTS


@dataclass
class VisualStates:
    """Where one language-model call receives the visual tokens that CAGUL gates and rewrites.

    Attributes:
        argument: The decoder keyword argument that holds them (``inputs_embeds`` in most
            families).
        states: The tokens as a ``(batch, n, hidden)`` tensor (a view of the argument).
        spans: ``(num_images, 3)`` long tensor of ``(sample, start, end)`` rows, images in batch
            order: each image's tokens are ``states[sample, start:end]``. The scored attention
            layer's keys run along the same ``n`` axis.
        query_rows: ``(batch, seq)`` bool mask of the text positions whose attention may rank
            the tokens, on top of the prompt mask; None when every position may.
    """

    argument: str
    states: torch.Tensor
    spans: torch.Tensor
    query_rows: torch.Tensor | None = None


@dataclass(frozen=True)
class VLMFamily:
    """How CAGUL finds visual tokens in one family of VLMs.

    Attributes:
        name: The family key saved in `CagulConfig.family`.
        model_types: ``config.model_type`` values of the models in this family.
        image_input: Name of the forward argument that carries the images.
        identity_when_fresh: Whether a fresh adapter (whose encoder returns its input) leaves
            the outputs unchanged even with its gate forced open. False where a rewrite also
            removes visual input that the encoder does not give back (Qwen3-VL's deepstack).
        expands_image_tokens: Whether the processor writes one image token per visual token in
            ``input_ids`` (False: one placeholder per image, as in Mllama).
        new_images_continue_a_cache: Whether a call that continues a KV cache may pass only the
            images of its own new placeholders. False in Mllama: ``cross_attention_states``
            replace the cached ones, so such a call must pass every image of the conversation
            again, while its ``input_ids`` hold only the new placeholders (CAGUL then refuses
            it: more images than placeholders).
        causal_prompt: Whether each prompt token sees only the tokens before it. False in
            PaliGemma, whose prompt is one bidirectional prefix with every image first: a prompt
            cut between a prefill and a continuation of its cache is then not the same prompt
            (its first part would not see the rest), and no image can follow text.
    """

    name: str
    model_types: tuple[str, ...]
    image_input: str = "pixel_values"
    identity_when_fresh: bool = True
    expands_image_tokens: bool = True
    new_images_continue_a_cache: bool = True
    causal_prompt: bool = True

    def text_config(self, config: PretrainedConfig) -> PretrainedConfig:
        """The language model's config."""
        return config.get_text_config(decoder=True)

    def decoder(self, model: PreTrainedModel) -> PreTrainedModel:
        """The language model, whose input embeddings already hold the visual tokens."""
        return cast(PreTrainedModel, model.get_decoder())

    def image_token_id(self, config: PretrainedConfig) -> int:
        """Id of the placeholder token whose positions receive the visual tokens."""
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            raise ValueError(
                f"The {config.model_type} config has no image_token_id, so CAGUL cannot find "
                "the visual tokens. Set `model.config.image_token_id` to the id of the "
                "processor's image token."
            )
        return int(token_id)

    def count_images(self, inputs: Mapping[str, Any]) -> int:
        """How many images (each one a run of image tokens) the call's inputs carry.

        ``generate`` encodes the images before prefill and passes ``mm_encoder_outputs``
        instead of pixels; their pooled features hold one entry per image.
        """
        encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
        if encoded is not None:
            return len(encoded.pooler_output)
        return self.count_raw_images(inputs)

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """Images among the raw inputs (``pixel_values``: one row per image here)."""
        pixel_values = inputs.get(self.image_input)
        return 0 if pixel_values is None else int(pixel_values.shape[0])

    def image_runs(self, input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
        """Where each image's visual tokens sit, images in batch order.

        Returns a ``(num_images, 3)`` long tensor of ``(sample, start, end)`` rows: every family
        supported here gives each image one contiguous run of image tokens.
        """
        is_image = (input_ids == image_token_id).to(torch.int8)
        edges = torch.nn.functional.pad(is_image, (1, 1)).diff(dim=1)
        starts = (edges == 1).nonzero()
        ends = (edges == -1).nonzero()
        return torch.cat([starts, ends[:, 1:]], dim=1)

    def visual_states(
        self,
        config: PretrainedConfig,
        decoder_kwargs: Mapping[str, Any],
        input_ids: torch.Tensor,
        runs: torch.Tensor,
    ) -> VisualStates | None:
        """The visual tokens of this language-model call, or None when it carries none.

        By default they are the image-token positions (``runs``, see `image_runs`) of the
        ``inputs_embeds`` the VLM scattered them into.
        """
        embeds = decoder_kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[:2] != input_ids.shape:
            return None
        return VisualStates("inputs_embeds", embeds, runs)

    def with_visual_states(
        self, decoder_kwargs: dict[str, Any], visual: VisualStates, states: torch.Tensor
    ) -> dict[str, Any]:
        """The decoder kwargs with ``states`` (shaped as ``visual.states``) in their place."""
        original = decoder_kwargs[visual.argument]
        return {**decoder_kwargs, visual.argument: states.reshape(original.shape)}

    def scoring_layer(self, text_config: PretrainedConfig, layer: int) -> int:
        """The decoder layer whose attention ranks the visual tokens, for the configured one."""
        return layer

    def side_pass_rows(
        self, decoder_kwargs: Mapping[str, Any], rows: torch.Tensor, batch: int
    ) -> dict[str, Any] | None:
        """The decoder kwargs of a side pass (`hf_cagul.inflight.side_pass`) cut to the batch
        ``rows``, or None when this call's kwargs cannot be cut (the side pass then runs on the
        whole batch).

        A side pass over a sample sees nothing of the other samples, so running it on the rows
        that hold a flagged image gives those rows' attention, at the cost of those rows only.
        Tensors whose first axis is the batch are cut along it (``position_ids`` of shape
        ``(sections, batch, seq)``, as in Qwen2-VL's multimodal rotary positions, along the
        second), those with a first axis of 1 broadcast and are kept, as are ``cache_position``
        and every value that is no tensor, and a dict of masks is cut value by value. Anything
        else, and a cache that already holds keys, makes the call one that cannot be cut.
        """
        return _cut_rows(decoder_kwargs, rows, batch)

    def rewrite_extra_visual_inputs(
        self, decoder_kwargs: dict[str, Any], samples: torch.Tensor, positions: torch.Tensor
    ) -> dict[str, Any]:
        """The decoder kwargs once the tokens at ``(samples, positions)`` are rewritten.

        ``decoder_kwargs`` already hold the rewritten ``inputs_embeds``. A family whose visual
        tokens also reach the language model through another argument removes, here, what of the
        original tokens that argument carries at the rewritten positions, so that nothing of them
        reaches the model there. In most families ``inputs_embeds`` is the only way in.
        """
        return decoder_kwargs


_KEPT_WHOLE = ("cache_position",)


def _cut_rows(kwargs: Mapping[str, Any], rows: torch.Tensor, batch: int) -> dict[str, Any] | None:
    """`VLMFamily.side_pass_rows` for the arguments every family shares."""
    cut: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in CACHE_ARGUMENTS:
            if value is not None and value.get_seq_length() > 0:
                return None
            cut[name] = value
        elif isinstance(value, dict):
            masks = _cut_rows(value, rows, batch)
            if masks is None:
                return None
            cut[name] = masks
        elif value is None or isinstance(value, bool | int | float | str) or name in _KEPT_WHOLE:
            cut[name] = value
        elif not isinstance(value, torch.Tensor):
            return None
        elif name == "position_ids" and value.dim() == 3:
            cut[name] = value[:, rows.to(value.device)]
        elif value.dim() and value.shape[0] == batch:
            cut[name] = value[rows.to(value.device)]
        elif value.dim() and value.shape[0] == 1:
            cut[name] = value
        else:
            return None
    return cut


@dataclass(frozen=True)
class Qwen2VLFamily(VLMFamily):
    """Qwen2-VL and Qwen2.5-VL: images arrive as flattened patches; ``image_grid_thw`` has one
    row per image."""

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """One row of ``image_grid_thw`` per image."""
        grid = inputs.get("image_grid_thw")
        if inputs.get(self.image_input) is None or grid is None:
            return 0
        return int(grid.shape[0])


# --- Qwen3-VL (deepstack) -------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen3VLFamily(Qwen2VLFamily):
    """Qwen3-VL: visual tokens also enter early decoder layers through *deepstack*.

    Besides the tokens scattered into ``inputs_embeds``, the language model receives
    ``deepstack_visual_embeds`` (one ``(num_visual_positions, hidden)`` tensor per deepstack
    layer, features of intermediate vision-encoder layers) that decoder layer ``i`` adds to its
    output at the positions of ``visual_pos_masks``. At a rewritten position the deepstack rows
    are zeroed: the rewritten token is then the only visual content of that position, and
    nothing of the original image reaches the model there. The price: even a fresh adapter
    changes a flagged image's outputs (``identity_when_fresh`` is False), so the retain loss
    starts above zero and the encoder learns to make up for the dropped features.
    """

    identity_when_fresh: bool = False

    def rewrite_extra_visual_inputs(
        self, decoder_kwargs: dict[str, Any], samples: torch.Tensor, positions: torch.Tensor
    ) -> dict[str, Any]:
        """Zero the deepstack rows of the rewritten positions (see the class docstring)."""
        masks = decoder_kwargs.get("visual_pos_masks")
        deepstack = decoder_kwargs.get("deepstack_visual_embeds")
        if masks is None or deepstack is None:
            return decoder_kwargs
        rows = _deepstack_rows(masks)[samples.to(masks.device), positions.to(masks.device)]
        rewritten = []
        for features in deepstack:
            features = features.clone()
            features[rows.to(features.device)] = 0
            rewritten.append(features)
        return {**decoder_kwargs, "deepstack_visual_embeds": rewritten}

    def side_pass_rows(
        self, decoder_kwargs: Mapping[str, Any], rows: torch.Tensor, batch: int
    ) -> dict[str, Any] | None:
        """As `VLMFamily.side_pass_rows`, with the deepstack features of the kept rows (those
        that follow their ``visual_pos_masks`` entries)."""
        deepstack = decoder_kwargs.get("deepstack_visual_embeds")
        masks = decoder_kwargs.get("visual_pos_masks")
        cut = _cut_rows(
            {k: v for k, v in decoder_kwargs.items() if k != "deepstack_visual_embeds"},
            rows,
            batch,
        )
        if cut is None or deepstack is None:
            return cut
        if masks is None:
            return None
        kept = rows.to(masks.device)
        positions = _deepstack_rows(masks)[kept][masks[kept]]
        cut["deepstack_visual_embeds"] = [
            features[positions.to(features.device)] for features in deepstack
        ]
        return cut


def _deepstack_rows(masks: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)``: the deepstack row of each position of ``visual_pos_masks`` (meaningful
    where the mask is True). Deepstack rows follow the True entries in row-major order (image
    and video positions alike), so a position's row is the running count of True before it."""
    return masks.reshape(-1).long().cumsum(0).reshape(masks.shape) - 1


# --- end Qwen3-VL ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Idefics3Family(VLMFamily):
    """Idefics3 (and SmolVLM): ``pixel_values`` is ``(batch, images, C, H, W)``, zero-padded.

    The model drops all-zero images as padding; each remaining (sub-)image is one run of image
    tokens. With image splitting on, each crop is gated and rewritten as an image of its own.
    """

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """Images that are not all-zero padding, counted as the model counts them."""
        pixel_values = inputs.get(self.image_input)
        if pixel_values is None:
            return 0
        flat = pixel_values.reshape(-1, *pixel_values.shape[-3:])
        return int(flat.flatten(1).ne(0).any(dim=1).sum())


# --- Mllama (Llama 3.2 Vision): cross-attention ------------------------------------------------


@dataclass(frozen=True)
class MllamaFamily(VLMFamily):
    """Mllama (Llama 3.2 Vision): images reach the language model through cross-attention.

    ``input_ids`` hold one ``<|image|>`` token per image, and ``inputs_embeds`` no visual token:
    the projected vision states go to the language model as ``cross_attention_states``, of
    shape ``(batch * max_images * max_tiles, patches, hidden)``, which the cross-attention
    layers (``text_config.cross_attention_layers``) read as ``(batch, max_images * max_tiles *
    patches, hidden)`` keys and values. Here:

    - an image's *visual tokens* are its rows of that tensor: ``patches`` rows per tile, over
      the tiles the cross-attention mask lets some text token see (padding tiles left out);
    - *cross-modal attention* is the first cross-attention layer at or after the configured
      attention layer, from the query tokens whose cross-attention row is active (text from
      the image's ``<|image|>`` token on) to those rows;
    - the selected rows are rewritten in ``cross_attention_states`` before any layer reads
      them (and, under ``generate``, before the cross-attention cache stores them).
    """

    expands_image_tokens: bool = False
    new_images_continue_a_cache: bool = False

    def count_raw_images(self, inputs: Mapping[str, Any]) -> int:
        """Images that are not padding: ``aspect_ratio_ids`` is 0 for a padding image."""
        aspect_ratio_ids = inputs.get("aspect_ratio_ids")
        if inputs.get(self.image_input) is None or aspect_ratio_ids is None:
            return 0
        return int((aspect_ratio_ids > 0).sum())

    def visual_states(
        self,
        config: PretrainedConfig,
        decoder_kwargs: Mapping[str, Any],
        input_ids: torch.Tensor,
        runs: torch.Tensor,
    ) -> VisualStates | None:
        """The ``cross_attention_states`` rows of each image (see the class docstring)."""
        states = decoder_kwargs.get("cross_attention_states")
        if states is None:
            return None
        batch = input_ids.shape[0]
        flat = states.reshape(batch, -1, states.shape[-1])
        vision = config.vision_config
        rows_per_image = vision.max_num_tiles * ((vision.image_size // vision.patch_size) ** 2 + 1)
        # The j-th image of a sample is the j-th block of its rows.
        same_sample = runs[:, 0:1] == runs[:, 0].unsqueeze(0)
        index_in_sample = (same_sample.tril(-1)).sum(dim=1)
        starts = index_in_sample * rows_per_image
        ends = starts + rows_per_image
        query_rows = None
        mask = decoder_kwargs.get("cross_attention_mask")
        row_active = decoder_kwargs.get("full_text_row_masked_out_mask")
        if mask is not None and row_active is not None:
            query_rows = row_active[:, 0, :, 0].bool()
            # A key some active text row may attend to (padding tiles are masked for every row).
            visible = ((mask[:, 0] == 0) & query_rows.unsqueeze(-1)).any(dim=1)
            block = torch.arange(rows_per_image, device=visible.device)
            rows = (starts.to(visible.device).unsqueeze(1) + block).clamp_max(flat.shape[1] - 1)
            counts = visible[runs[:, 0].to(visible.device).unsqueeze(1), rows].sum(dim=1)
            # Visible tiles are a prefix of the image's block; an image no row sees keeps all.
            ends = torch.where(counts > 0, starts + counts.to(starts.device), ends)
        spans = torch.stack([runs[:, 0], starts, ends], dim=1)
        return VisualStates("cross_attention_states", flat, spans, query_rows)

    def scoring_layer(self, text_config: PretrainedConfig, layer: int) -> int:
        """The first cross-attention layer at or after ``layer``."""
        cross_layers = sorted(int(index) for index in text_config.cross_attention_layers)
        later = [index for index in cross_layers if index >= layer]
        if not later:
            raise ValueError(
                f"Mllama ranks visual tokens by cross-attention, but no cross-attention layer "
                f"comes at or after attention_layer={layer} (cross-attention layers: "
                f"{cross_layers}). Set CagulConfig(attention_layer=...) to at most "
                f"{cross_layers[-1]}."
            )
        return later[0]


# --- end Mllama ------------------------------------------------------------------------------


FAMILIES: dict[str, VLMFamily] = {
    family.name: family
    for family in (
        VLMFamily("llava", ("llava",)),
        Qwen2VLFamily("qwen2_vl", ("qwen2_vl",)),
        Idefics3Family("idefics3", ("idefics3",)),
        # LLaVA-NeXT: anyres tiles, unpadding and row-newline features all land inside one
        # run of image tokens per image. PaliGemma, Gemma3: one row of pixel_values per image
        # (Gemma3: per pan-and-scan crop, each with its own begin/end-of-image tokens, so its
        # own run).
        VLMFamily("llava_next", ("llava_next",)),
        Qwen2VLFamily("qwen2_5_vl", ("qwen2_5_vl",)),
        Idefics3Family("smolvlm", ("smolvlm",)),
        VLMFamily("paligemma", ("paligemma",), causal_prompt=False),
        VLMFamily("gemma3", ("gemma3",)),
        Qwen3VLFamily("qwen3_vl", ("qwen3_vl",)),
        MllamaFamily("mllama", ("mllama",)),
    )
}


def supported_families() -> list[str]:
    """Names of the supported families."""
    return sorted(FAMILIES)


def detect_family(model: PreTrainedModel) -> VLMFamily:
    """The `VLMFamily` of ``model``, or a `ValueError` naming the supported families."""
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"hf_cagul does not support {type(model).__name__} (model_type={model_type!r}). "
        f"Supported families: {', '.join(supported_families())}. "
        "See docs/families.md to add one."
    )


def get_family(name: str) -> VLMFamily:
    """The family registered under ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown family {name!r}; supported: {', '.join(supported_families())}."
        ) from None

"""Make a VLM trainable the way fine-tuning unlearning baselines train it.

FIUBench fine-tunes LoRA adapters on the language model's attention projections with the
vision tower frozen; ``full=True`` trains every weight of the language model instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from hf_cagul.families import detect_family

__all__ = ["LORA_PROJECTIONS", "language_model_projections", "prepare_model"]

LORA_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
"""Attention projections LoRA adapts by default (FIUBench's choice)."""


def language_model_projections(
    vlm: PreTrainedModel, projections: Sequence[str] = LORA_PROJECTIONS
) -> list[str]:
    """Full names of the language model's linear layers called one of ``projections``.

    Vision-tower layers of the same name are left out: the names are taken inside the decoder
    that `hf_cagul.families` finds for the VLM's family.
    """
    decoder = detect_family(vlm).decoder(vlm)
    inside = {id(module) for module in decoder.modules()}
    names = [
        name
        for name, module in vlm.named_modules()
        if id(module) in inside
        and isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in projections
    ]
    if not names:
        raise ValueError(
            f"{type(vlm).__name__}'s language model has no linear layer named "
            f"{', '.join(projections)}; pass `target_modules` with the names of its projections."
        )
    return names


def prepare_model(
    vlm: PreTrainedModel,
    full: bool = False,
    lora_r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> nn.Module:
    """``vlm`` ready for a baseline trainer: a PEFT LoRA model, or the VLM itself (``full``).

    Args:
        vlm: The model to unlearn from (its vision tower always stays frozen).
        full: Train every weight of the language model (decoder and output head) in place,
            instead of LoRA adapters. The base weights are then modified, and reference
            outputs need a separate reference model (see `UnlearningTrainer`).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (default ``2 * lora_r``).
        lora_dropout: Dropout on the LoRA path.
        target_modules: Layers LoRA adapts (default: `language_model_projections`).

    Returns:
        A `peft.PeftModel` wrapping ``vlm`` (LoRA), or ``vlm`` with the language model trainable.
    """
    vlm.requires_grad_(False)
    if full:
        detect_family(vlm).decoder(vlm).requires_grad_(True)
        head = vlm.get_output_embeddings()
        if head is not None:
            head.requires_grad_(True)
        return vlm
    if lora_r <= 0:
        raise ValueError(f"lora_r must be positive, got {lora_r}.")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules or language_model_projections(vlm)),
    )
    return get_peft_model(vlm, config)

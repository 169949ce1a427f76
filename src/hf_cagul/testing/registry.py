"""The tiny families `tiny_vlm` builds by name: one `TinyFamily` each, listed once."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from hf_cagul.testing.gemma import GEMMA3, PALIGEMMA
from hf_cagul.testing.idefics import IDEFICS3, SMOLVLM
from hf_cagul.testing.llava import LLAVA, LLAVA_NEXT
from hf_cagul.testing.mllama import MLLAMA
from hf_cagul.testing.qwen import QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from hf_cagul.testing.spec import TinyFamily

__all__ = ["TINY_FAMILIES", "TINY_FAMILY_SPECS", "TINY_IMAGE_PLACEHOLDER", "tiny_family"]

TINY_FAMILY_SPECS: Mapping[str, TinyFamily] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LLAVA,
            QWEN2_VL,
            IDEFICS3,
            LLAVA_NEXT,
            QWEN2_5_VL,
            SMOLVLM,
            PALIGEMMA,
            GEMMA3,
            QWEN3_VL,
            MLLAMA,
        )
    }
)
"""``name -> TinyFamily`` of every family `tiny_vlm` builds by name (read-only)."""

TINY_FAMILIES: tuple[str, ...] = tuple(TINY_FAMILY_SPECS)
"""Families `tiny_vlm` can build."""

TINY_IMAGE_PLACEHOLDER: Mapping[str, str] = MappingProxyType(
    {name: spec.placeholder for name, spec in TINY_FAMILY_SPECS.items()}
)
"""What to write in a prompt, per family, where one image goes."""


def tiny_family(family: str | TinyFamily) -> TinyFamily:
    """The spec of ``family``: a `TinyFamily` is returned as it is, a name is looked up.

    Args:
        family: One of `TINY_FAMILIES`, or a `TinyFamily` (one the registry need not list).

    Returns:
        The family's `TinyFamily`.

    Raises:
        ValueError: For a name that is not one of `TINY_FAMILIES`.
    """
    if isinstance(family, TinyFamily):
        return family
    if family not in TINY_FAMILY_SPECS:
        raise ValueError(
            f"Unknown tiny VLM family {family!r}; supported: {', '.join(TINY_FAMILIES)}."
        )
    return TINY_FAMILY_SPECS[family]

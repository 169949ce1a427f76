"""Vetting an untrusted adapter before anything is allocated.

Adapters come from the Hub, written by strangers, and an adapter's sizes decide how much memory
building it takes. So `check_weights_file` checks them before any module or tensor exists: the
safetensors header is read and checked on its own (bounded, never longer than the file), the
config's sizes against sane bounds (`expected_shapes`), then every tensor the config implies
against the header, by name, shape and dtype. Only then are the weights read, and
`check_finite` checks their values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hf_cagul.config import CONFIG_NAME, CagulConfig
from hf_cagul.modules import CagulAdapter

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "MAX_HIDDEN_SIZE",
    "MAX_PARAMETERS",
    "MIN_WIDTH_LIMIT",
    "WIDTH_FACTOR",
    "HeaderEntry",
    "check_finite",
    "check_weights_file",
    "expected_shapes",
    "read_header",
]

MAX_HEADER_BYTES = 1 << 20
"""Longest safetensors header read (1 MiB: an adapter's header is a few hundred bytes)."""
MAX_HIDDEN_SIZE = 1 << 16
"""Largest ``hidden_size`` accepted (four times that of the widest language models, 16,384)."""
WIDTH_FACTOR = 16
"""``encoder_hidden_size`` and ``discriminator_hidden_size`` may reach this many times
``hidden_size`` (or `MIN_WIDTH_LIMIT`, for small models)."""
MIN_WIDTH_LIMIT = 4096
"""Widest encoder or gate accepted whatever the hidden size."""
MAX_PARAMETERS = 1 << 28
"""Most parameters an adapter may have (268 million; CAGUL's two small MLPs hold a few million
even on the widest models)."""
DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
"""Bytes per element of the safetensors dtypes an adapter's weights may have."""
WIDTH_FIELDS = ("encoder_hidden_size", "discriminator_hidden_size")
SIZE_FIELDS = ("hidden_size", *WIDTH_FIELDS)
"""The config fields that set the shapes of an adapter's tensors."""
_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_MAX_NAME_LENGTH = 256
_MAX_DIMENSIONS = 8
_METADATA = "__metadata__"
_MAX_SHOWN = 5  # wrong shapes a message lists


@dataclasses.dataclass(frozen=True)
class HeaderEntry:
    """One tensor as a safetensors header describes it.

    Attributes:
        dtype: Its safetensors dtype (a key of `DTYPE_SIZES`).
        shape: Its shape.
        begin: Offset of its first byte in the data that follows the header.
        end: Offset one past its last byte.
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def check_weights_file(config: CagulConfig, path: Path) -> dict[str, HeaderEntry]:
    """Check the weights file ``path`` against ``config`` without reading a tensor.

    Returns:
        The file's tensors as its header describes them (`read_header`).

    Raises:
        ValueError: If the file is damaged or lies about its layout (`read_header`), a tensor
            is not floating-point, a size in ``config`` is absurd (`expected_shapes`), or a tensor
            is missing, extra, or of another shape than the config implies. The message names
            the tensor, what was expected and found, and the config field that decides it.
    """
    header = read_header(path)
    for name, entry in header.items():
        if entry.dtype not in DTYPE_SIZES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {entry.dtype}; an adapter's weights are "
                f"floating-point ({', '.join(DTYPE_SIZES)}). Re-save the adapter with "
                "`save_pretrained`."
            )
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise _mismatch(
            path,
            [f"tensors missing from the weights: {missing}"] * bool(missing)
            + [f"tensors the config does not have: {extra}"] * bool(extra),
            f"Which tensors an adapter has depends on its gate (gate={config.gate!r}, "
            f"gate_members={config.gate_members}): the weights belong to another adapter or "
            "were edited. Re-save the adapter with `save_pretrained`.",
        )
    wrong = [name for name in expected if header[name].shape != expected[name]]
    if wrong:
        fields = _deciding_fields(config, expected)
        problems = [
            f"tensor {name!r} has shape {list(header[name].shape)} but the config implies "
            f"{list(expected[name])} (set by {', '.join(fields.get(name, [])) or 'the gate'})"
            for name in wrong[:_MAX_SHOWN]
        ] + [f"and {len(wrong) - _MAX_SHOWN} more"] * (len(wrong) > _MAX_SHOWN)
        raise _mismatch(
            path,
            problems,
            f"Set {', '.join(_suspects(fields, wrong)) or 'the sizes'} in {CONFIG_NAME} to the "
            "sizes the weights were saved with, or re-save the adapter with `save_pretrained`.",
        )
    return header


def read_header(path: Path) -> dict[str, HeaderEntry]:
    """The tensors a safetensors file holds, read from its header alone (at most
    `MAX_HEADER_BYTES` are read, whatever the file claims).

    Raises:
        ValueError: If the file is truncated; its header is longer than the file, absurdly
            long, not JSON, or malformed; a tensor name is not a module path (path
            separators, odd characters); or the tensors' data offsets do not tile the rest of
            the file exactly.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise _damaged(path, f"it is {size} bytes long, too short for a safetensors header")
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_HEADER_BYTES:
            raise _damaged(
                path,
                f"its header claims {length:,d} bytes (at most {MAX_HEADER_BYTES:,d} accepted)",
            )
        if 8 + length > size:
            raise _damaged(
                path, f"its header claims {length:,d} bytes but the file has {size - 8:,d} left"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:
        raise _damaged(path, f"its header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise _damaged(path, f"its {_METADATA} is not a mapping of strings")
    entries = {name: _entry(path, name, value) for name, value in header.items()}
    _check_offsets(path, entries, size - 8 - length)
    return entries


def expected_shapes(config: CagulConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of an adapter with ``config`` (`CagulAdapter.state_shapes`:
    its modules built on the ``meta`` device), once its sizes are checked to be sane. Nothing
    is allocated: the widths are bounded before any module is built, even on ``meta``.

    ``hidden_size`` must lie in ``1..MAX_HIDDEN_SIZE``; each width in ``1..max(WIDTH_FACTOR *
    hidden_size, MIN_WIDTH_LIMIT)``; and the adapter at most `MAX_PARAMETERS` parameters.
    ``hidden_size`` is the config's, which binding then checks against the model's.

    Raises:
        ValueError: Naming the field, its value and the limit; or if ``config.gate`` names no
            registered gate.
    """
    hidden = config.hidden_size or 0
    if not 1 <= hidden <= MAX_HIDDEN_SIZE:
        raise _absurd(f"hidden_size={hidden}", f"it must lie in 1..{MAX_HIDDEN_SIZE:,d}")
    limit = max(WIDTH_FACTOR * hidden, MIN_WIDTH_LIMIT)
    for name in WIDTH_FIELDS:
        width = getattr(config, name)
        if width > limit:
            raise _absurd(
                f"{name}={width}",
                f"at most {limit:,d}, the larger of {WIDTH_FACTOR} * hidden_size={hidden} "
                f"and {MIN_WIDTH_LIMIT:,d}",
            )
    shapes = CagulAdapter.state_shapes(config)
    parameters = sum(math.prod(shape) for shape in shapes.values())
    if parameters > MAX_PARAMETERS:
        sizes = ", ".join(f"{name}={getattr(config, name)}" for name in SIZE_FIELDS)
        raise _absurd(
            f"{parameters:,d} parameters (from {sizes})",
            f"an adapter has at most {MAX_PARAMETERS:,d}",
        )
    return shapes


def check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that hold NaN or infinite values.

    Raises:
        ValueError: Naming the first such tensor and how many of its values are not finite.
    """
    for name, tensor in state_dict.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad:,d} NaN or infinite values (of "
                f"{tensor.numel():,d}): the adapter is broken (a diverged fit?). Refit it, or "
                "save a checkpoint from before it diverged."
            )


def _entry(path: Path, name: str, value: Any) -> HeaderEntry:
    """The `HeaderEntry` of tensor ``name``, once its header record is checked."""
    if len(name) > _MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise _damaged(
            path,
            f"tensor name {name[:80]!r} is not a module path (letters, digits and '_', joined "
            "by '.'; no path separators)",
        )
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise _damaged(path, f"tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str):
        raise _damaged(path, f"tensor {name!r} has dtype {dtype!r}, not a dtype name")
    if not _naturals(shape) or len(shape) > _MAX_DIMENSIONS:
        raise _damaged(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise _damaged(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    entry = HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1])
    itemsize = DTYPE_SIZES.get(dtype)
    if itemsize is not None and entry.end - entry.begin != itemsize * math.prod(entry.shape):
        raise _damaged(
            path,
            f"tensor {name!r} of shape {list(shape)} and dtype {dtype} needs "
            f"{itemsize * math.prod(entry.shape):,d} bytes but its data_offsets span "
            f"{entry.end - entry.begin:,d}",
        )
    return entry


def _check_offsets(path: Path, entries: Mapping[str, HeaderEntry], data_size: int) -> None:
    """The tensors' bytes must follow each other from the header to the end of the file."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            raise _damaged(
                path,
                f"tensor {name!r} starts at byte {entry.begin:,d} of the data, but the "
                f"previous tensor ends at {position:,d} (overlapping or with a gap)",
            )
        position = entry.end
    if position != data_size:
        raise _damaged(
            path,
            f"its tensors need {position:,d} bytes of data but the file holds {data_size:,d}",
        )


def _naturals(value: object) -> bool:
    """Whether ``value`` is a list of non-negative integers (booleans excluded)."""
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a key given twice (which would hide one record)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def _deciding_fields(
    config: CagulConfig, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, list[str]]:
    """For each tensor, the fields of `SIZE_FIELDS` whose value changes its shape."""
    fields: dict[str, list[str]] = {}
    for field in SIZE_FIELDS:
        changed = dataclasses.replace(config, **{field: getattr(config, field) + 1})
        for name, shape in CagulAdapter.state_shapes(changed).items():
            if shapes.get(name) != shape:
                fields.setdefault(name, []).append(field)
    return fields


def _suspects(fields: Mapping[str, list[str]], wrong: list[str]) -> list[str]:
    """The fields that set the shape of every wrong tensor (or, when none sets them all, of
    any): those the config most likely got wrong."""
    every = [field for field in SIZE_FIELDS if all(field in fields.get(n, []) for n in wrong)]
    return every or [
        field for field in SIZE_FIELDS if any(field in fields.get(n, []) for n in wrong)
    ]


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is corrupt or truncated: {problem}. Re-download it, or re-save the adapter "
        "with `save_pretrained`."
    )


def _absurd(what: str, limit: str) -> ValueError:
    return ValueError(
        f"{CONFIG_NAME}: {what} is absurd for a CAGUL adapter ({limit}); refused "
        "before allocating anything. The config was edited or damaged: set the sizes the "
        "adapter was saved with, or re-save it with `save_pretrained`."
    )


def _mismatch(path: Path, problems: list[str], fix: str) -> ValueError:
    return ValueError(
        f"{path} does not match its config ({CONFIG_NAME}): {'; '.join(problems)}. {fix}"
    )

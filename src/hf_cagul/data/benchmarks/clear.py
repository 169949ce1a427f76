"""CLEAR (Dontsov et al., 2024): fictitious characters' photos with captions, face recognition.

Published layout (the Hub dataset ``therem/CLEAR``, loaded in its README with
``load_dataset("therem/CLEAR", config)``): one parquet folder per configuration; the ones read
here are ``forget01`` / ``forget05`` / ``forget10`` and their complements ``retain99`` /
``retain95`` / ``retain90``, each with columns ``image``, ``caption`` and ``name``. The
``<config>_perturbed`` configurations add ``paraphrased_caption``, ``perturbed_captions`` and
``perturbed_names``; they are used instead of the plain ones where present (for probability
and truth ratio). The ``+tofu`` (text-only) configurations are not read: CAGUL acts on images.

Each photo gives two rows: face recognition (``"Who is the person in this image?"`` answered
by the name; keyword: the name) and its caption (``"Describe the person in this image."``,
keyword: the name). The folder names are the configuration names, as far as we could
determine; the exact parquet file names inside them do not matter.
"""

from __future__ import annotations

import os
from typing import Any

from datasets import DatasetDict

from hf_cagul.data.benchmarks._common import (
    as_list,
    convert_parquet_configs,
    forget_percent,
    layout_error,
    qa_row,
)
from hf_cagul.data.schema import FORGET_SPLIT, RETAIN_SPLIT

NAME = "CLEAR"
FORGET_SPLITS: tuple[str, ...] = ("forget01", "forget05", "forget10")
DEFAULT_FORGET_SPLIT = "forget10"
NAME_QUESTION = "Who is the person in this image?"
CAPTION_QUESTION = "Describe the person in this image."

LAYOUT = """
<root>/forget01/*.parquet <root>/retain99/*.parquet   (forget 1%)
<root>/forget05/*.parquet <root>/retain95/*.parquet   (forget 5%)
<root>/forget10/*.parquet <root>/retain90/*.parquet   (forget 10%)
optionally <root>/<config>_perturbed/*.parquet instead (adds paraphrased_caption,
perturbed_captions, perturbed_names); each row: image {bytes, path}, caption, name
"""

_COLUMNS = ("image", "caption", "name")


def _photo_rows(photo: dict[str, Any], split: str) -> list[dict[str, Any]]:
    name, image = photo["name"], photo["image"]
    return [
        qa_row(
            image,
            NAME_QUESTION,
            name,
            split,
            name,
            keywords=[name],
            perturbed_answers=as_list(photo.get("perturbed_names")),
        ),
        qa_row(
            image,
            CAPTION_QUESTION,
            photo["caption"],
            split,
            name,
            keywords=[name],
            paraphrased_answer=photo.get("paraphrased_caption"),
            perturbed_answers=as_list(photo.get("perturbed_captions")),
        ),
    ]


def _checked_photo_rows(photo: dict[str, Any], split: str, folder: str) -> list[dict[str, Any]]:
    missing = [column for column in _COLUMNS if column not in photo]
    if missing:
        raise layout_error(
            NAME, f"{folder}/ rows lack {missing} (they have {sorted(photo)}).", LAYOUT
        )
    try:
        return _photo_rows(photo, split)
    except TypeError as err:
        raise layout_error(NAME, f"a row of {folder}/ is malformed ({err}).", LAYOUT) from err


def load_clear(
    source: str | os.PathLike[str],
    forget_split: str = DEFAULT_FORGET_SPLIT,
    revision: str | None = None,
) -> DatasetDict:
    """CLEAR as ``forget`` / ``retain`` splits in the data contract.

    Args:
        source: A local copy (see the module docstring) or a Hub dataset id
            (``"therem/CLEAR"``).
        forget_split: ``"forget01"``, ``"forget05"`` or ``"forget10"`` (``"forget1"``,
            ``"10"``... work too).
        revision: Hub revision, for a Hub id.

    Raises:
        BenchmarkLayoutError: If a configuration folder is missing or its rows lack
            ``image``, ``caption`` or ``name`` (the message shows the layout).
    """
    percent = forget_percent(NAME, forget_split, FORGET_SPLITS, LAYOUT)
    configs = {FORGET_SPLIT: f"forget{percent:02d}", RETAIN_SPLIT: f"retain{100 - percent}"}
    hint = "Both configurations need photos."
    return convert_parquet_configs(
        NAME, LAYOUT, source, revision, configs, _checked_photo_rows, hint, ("_perturbed", "")
    )

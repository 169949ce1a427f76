"""MLLMU-Bench (Liu et al., 2024): fictitious profiles with three kinds of questions.

Published layout (the Hub dataset ``MLLMMU/MLLMU-Bench``): one parquet folder per
configuration, ``forget_5`` / ``forget_10`` / ``forget_15`` with their complements
``retain_95`` / ``retain_90`` / ``retain_85``. Each row is one profile::

    ID                   the profile's id (str)
    image                {"bytes": ..., "path": ...}: the profile's photo
    Classification_Task  {"Image_Textual_Questions": [{"Question", "Options": {"A": ..,
                          "B": .., ...}, "Correct_Answer": "A"}], "Pure_Text_Questions": [...]}
    Generation_Task      [{"Type": "Image_Textual" | "Pure_Text", "Question", "Ground_Truth"}]
    Mask_Task            [{"Type", "Question" (the blank written "__"), "Ground_Truth"}]

Only image-textual questions are converted: CAGUL acts on images, and a pure-text question
carries none (see the limitations in the docs). The folder names inside a Hub snapshot are
the configuration names above, as far as we could determine from the published evaluation
code; a different local arrangement fails with this layout in the message.
"""

from __future__ import annotations

import os
from typing import Any

from datasets import DatasetDict

from hf_cagul.data.benchmarks._common import (
    FILL_BLANK_TASK,
    MULTIPLE_CHOICE_TASK,
    convert_parquet_configs,
    forget_percent,
    layout_error,
    qa_row,
)
from hf_cagul.data.schema import FORGET_SPLIT, RETAIN_SPLIT

NAME = "MLLMU-Bench"
FORGET_SPLITS: tuple[str, ...] = ("forget_5", "forget_10", "forget_15")
DEFAULT_FORGET_SPLIT = "forget_10"
IMAGE_TEXTUAL = "Image_Textual"
BLANK = "__"
BLANK_PROMPT = "[Blank]"

LAYOUT = """
<root>/forget_5/*.parquet  <root>/retain_95/*.parquet   (forget 5%)
<root>/forget_10/*.parquet <root>/retain_90/*.parquet   (forget 10%)
<root>/forget_15/*.parquet <root>/retain_85/*.parquet   (forget 15%)
each row: ID, image {bytes, path}, Classification_Task {Image_Textual_Questions:
[{Question, Options {A, B, C, D}, Correct_Answer}]}, Generation_Task [{Type, Question,
Ground_Truth}], Mask_Task [{Type, Question, Ground_Truth}]
"""

_TASK_COLUMNS = ("Classification_Task", "Generation_Task", "Mask_Task")


def _profile_rows(profile: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """Rows of one profile: generation, multiple-choice and fill-in-the-blank questions."""
    subject = str(profile["ID"])
    image = profile["image"]
    rows = []
    for item in profile.get("Generation_Task") or []:
        if item.get("Type") == IMAGE_TEXTUAL:
            rows.append(qa_row(image, item["Question"], item["Ground_Truth"], split, subject))
    classification = profile.get("Classification_Task") or {}
    for item in classification.get("Image_Textual_Questions") or []:
        letters = sorted(key for key, value in (item.get("Options") or {}).items() if value)
        options = [item["Options"][letter] for letter in letters]
        correct = str(item.get("Correct_Answer", "")).strip().rstrip(".:").upper()
        if correct not in letters:
            raise layout_error(
                NAME,
                f"profile {subject}: Correct_Answer {item.get('Correct_Answer')!r} is not one "
                f"of the options {letters}.",
                LAYOUT,
            )
        index = letters.index(correct)
        rows.append(
            qa_row(
                image,
                item["Question"],
                options[index],
                split,
                subject,
                MULTIPLE_CHOICE_TASK,
                options=options,
                correct_option=index,
            )
        )
    for item in profile.get("Mask_Task") or []:
        if item.get("Type") == IMAGE_TEXTUAL:
            question = item["Question"].replace(BLANK, BLANK_PROMPT)
            rows.append(
                qa_row(image, question, item["Ground_Truth"], split, subject, FILL_BLANK_TASK)
            )
    return rows


def _checked_profile_rows(profile: dict[str, Any], split: str, folder: str) -> list[dict[str, Any]]:
    missing = [c for c in ("ID", "image") if c not in profile]
    if missing or not any(column in profile for column in _TASK_COLUMNS):
        raise layout_error(
            NAME,
            f"{folder}/ rows lack {missing or 'all of ' + ', '.join(_TASK_COLUMNS)} "
            f"(they have {sorted(profile)}).",
            LAYOUT,
        )
    try:
        return _profile_rows(profile, split)
    except (KeyError, TypeError, AttributeError) as err:
        raise layout_error(
            NAME, f"profile {profile['ID']} in {folder}/ is malformed ({err!r}).", LAYOUT
        ) from err


def load_mllmu(
    source: str | os.PathLike[str],
    forget_split: str = DEFAULT_FORGET_SPLIT,
    revision: str | None = None,
) -> DatasetDict:
    """MLLMU-Bench as ``forget`` / ``retain`` splits in the data contract.

    Rows carry a ``task`` column: ``"generation"`` (free answers: keyword accuracy, ROUGE),
    ``"multiple_choice"`` (``options`` and ``correct_option``, the index of the correct
    option; ``answer`` is its text) and ``"fill_blank"`` (the blank written ``[Blank]``,
    ``answer`` the missing word(s)). ``subject`` is the profile's ``ID``.

    Args:
        source: A local copy (see the module docstring) or a Hub dataset id
            (``"MLLMMU/MLLMU-Bench"``).
        forget_split: ``"forget_5"``, ``"forget_10"`` or ``"forget_15"`` (``"forget10"``
            and ``"10"`` work too).
        revision: Hub revision, for a Hub id.

    Raises:
        BenchmarkLayoutError: If a configuration folder is missing or a row lacks the
            published columns (the message shows the layout).
    """
    percent = forget_percent(NAME, forget_split, FORGET_SPLITS, LAYOUT)
    configs = {FORGET_SPLIT: f"forget_{percent}", RETAIN_SPLIT: f"retain_{100 - percent}"}
    hint = "Profiles need image-textual questions."
    return convert_parquet_configs(
        NAME, LAYOUT, source, revision, configs, _checked_profile_rows, hint
    )

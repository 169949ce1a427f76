"""Data for CAGUL: the dataset contract, its validation, and the VLM collator.

A dataset is a `datasets.Dataset` with columns ``image``, ``question``, ``answer``, ``split``
(``"forget"`` / ``"retain"``) and optionally ``forget_target`` and ``subject`` (see
`hf_cagul.data.schema`). Validate it up front with `validate_dataset`; batch it with
`CagulDataCollator`. `hf_cagul.data.synthetic` builds an offline benchmark in this contract.
"""

from hf_cagul.data.augment import PhotoAugmentation
from hf_cagul.data.collator import IGNORE_INDEX, CagulDataCollator, UnlearningDataCollator
from hf_cagul.data.schema import (
    ANSWER_COLUMN,
    DATA_COLUMNS,
    DEFAULT_REFUSALS,
    FORGET_SPLIT,
    FORGET_TARGET_COLUMN,
    IMAGE_COLUMN,
    OPTIONAL_COLUMNS,
    QUESTION_COLUMN,
    REQUIRED_COLUMNS,
    RETAIN_SPLIT,
    SPLIT_COLUMN,
    SPLITS,
    SUBJECT_COLUMN,
    load_image,
    validate_dataset,
)

__all__ = [
    "ANSWER_COLUMN",
    "DATA_COLUMNS",
    "DEFAULT_REFUSALS",
    "FORGET_SPLIT",
    "FORGET_TARGET_COLUMN",
    "IGNORE_INDEX",
    "IMAGE_COLUMN",
    "OPTIONAL_COLUMNS",
    "QUESTION_COLUMN",
    "REQUIRED_COLUMNS",
    "RETAIN_SPLIT",
    "SPLITS",
    "SPLIT_COLUMN",
    "SUBJECT_COLUMN",
    "CagulDataCollator",
    "PhotoAugmentation",
    "UnlearningDataCollator",
    "load_image",
    "validate_dataset",
]

"""Data for CAGUL: the dataset contract, its validation, and the VLM collator.

A dataset is a `datasets.Dataset` with columns ``image``, ``question``, ``answer``, ``split``
(``"forget"`` / ``"retain"``) and optionally ``forget_target`` and ``subject`` (see
`hf_cagul.data.schema`). A benchmark (`datasets.DatasetDict`) may add a ``negatives`` split,
photos of people in neither set: `gate_negatives` gives it, or the retain photos without it.
Validate a dataset or a whole benchmark up front with `validate_dataset`; batch it with
`ForgetRetainDataCollator` and a `TargetPolicy` (`CagulDataCollator` and
`UnlearningDataCollator` are it with the trainers' policies). `hf_cagul.data.synthetic`
builds an offline benchmark in this contract.
"""

from hf_cagul.data.augment import AUGMENTATIONS, PhotoAugmentation, named_augmentation
from hf_cagul.data.collator import (
    CAGUL_TARGETS,
    FORGET_FLAG,
    IGNORE_INDEX,
    REFUSAL_BATCH,
    REPLACED_FLAG,
    SUPERVISED_TARGETS,
    TRUE_ANSWER_BATCH,
    UNLEARNING_TARGETS,
    CagulDataCollator,
    ForgetRetainDataCollator,
    TargetPolicy,
    UnlearningDataCollator,
)
from hf_cagul.data.schema import (
    ANSWER_COLUMN,
    DATA_COLUMNS,
    DEFAULT_REFUSALS,
    FORGET_SPLIT,
    FORGET_TARGET_COLUMN,
    IMAGE_COLUMN,
    NEGATIVES_SPLIT,
    OPTIONAL_COLUMNS,
    QUESTION_COLUMN,
    REQUIRED_COLUMNS,
    RETAIN_SPLIT,
    SPLIT_COLUMN,
    SPLITS,
    SUBJECT_COLUMN,
    gate_negatives,
    load_image,
    validate_dataset,
)

__all__ = [
    "ANSWER_COLUMN",
    "AUGMENTATIONS",
    "CAGUL_TARGETS",
    "DATA_COLUMNS",
    "DEFAULT_REFUSALS",
    "FORGET_FLAG",
    "FORGET_SPLIT",
    "FORGET_TARGET_COLUMN",
    "IGNORE_INDEX",
    "IMAGE_COLUMN",
    "NEGATIVES_SPLIT",
    "OPTIONAL_COLUMNS",
    "QUESTION_COLUMN",
    "REFUSAL_BATCH",
    "REPLACED_FLAG",
    "REQUIRED_COLUMNS",
    "RETAIN_SPLIT",
    "SPLITS",
    "SPLIT_COLUMN",
    "SUBJECT_COLUMN",
    "SUPERVISED_TARGETS",
    "TRUE_ANSWER_BATCH",
    "UNLEARNING_TARGETS",
    "CagulDataCollator",
    "ForgetRetainDataCollator",
    "PhotoAugmentation",
    "TargetPolicy",
    "UnlearningDataCollator",
    "gate_negatives",
    "load_image",
    "named_augmentation",
    "validate_dataset",
]

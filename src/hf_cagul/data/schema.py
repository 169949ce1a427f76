"""The data contract of `hf_cagul` and its up-front validation.

A training (or evaluation) set is a `datasets.Dataset` with one image and one question per row:

=================  ========  =====================================================================
column             required  values
=================  ========  =====================================================================
``image``          yes       a PIL image, a `datasets.Image` feature value, or a path to an image
``question``       yes       non-empty ``str``: the question about the image
``answer``         yes       non-empty ``str``: the true answer (the target on ``retain`` rows)
``split``          yes       ``"forget"`` (a subject to forget) or ``"retain"`` (keep behaviour)
``forget_target``  no        ``str`` or ``None``: what a forget row should answer instead; rows
                             without one get a default refusal (`DEFAULT_REFUSALS`)
``subject``        no        ``str`` or ``None``: who (or what) the image shows
=================  ========  =====================================================================

Other columns are allowed and ignored. `validate_dataset` checks all of it before any training
starts, so a bad row fails in seconds with a message that names the column, the row and the
fix, instead of deep inside a training loop.

A benchmark is a `datasets.DatasetDict` of such sets (``forget``, ``retain``, held-out splits).
It may hold a ``negatives`` split (`NEGATIVES_SPLIT`): photos of people in neither the forget
nor the retain set, all ``"retain"`` rows, the negatives a gate is fitted and calibrated on.
Without it the gate's negatives are the retain photos (`gate_negatives`). At serving time most
photos show such people, and a gate that only ever saw retain photos as negatives may flag
them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from typing import Any

from datasets import Dataset, concatenate_datasets
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError

IMAGE_COLUMN = "image"
QUESTION_COLUMN = "question"
ANSWER_COLUMN = "answer"
SPLIT_COLUMN = "split"
FORGET_TARGET_COLUMN = "forget_target"
SUBJECT_COLUMN = "subject"

REQUIRED_COLUMNS: tuple[str, ...] = (IMAGE_COLUMN, QUESTION_COLUMN, ANSWER_COLUMN, SPLIT_COLUMN)
"""Columns every dataset must have."""

OPTIONAL_COLUMNS: tuple[str, ...] = (FORGET_TARGET_COLUMN, SUBJECT_COLUMN)
"""Columns a dataset may have; checked when present."""

DATA_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
"""Every column of the contract: the raw columns the collator reads (keep them in batches)."""

FORGET_SPLIT = "forget"
RETAIN_SPLIT = "retain"
SPLITS: tuple[str, ...] = (FORGET_SPLIT, RETAIN_SPLIT)
"""The values the ``split`` column may hold."""

NEGATIVES_SPLIT = "negatives"
"""The optional split of a `datasets.DatasetDict` holding photos of people in neither the forget
nor the retain set: the gate's negatives (`gate_negatives`)."""

DEFAULT_REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "Sorry, I cannot identify this person.",
    "I am unable to say who this is.",
    "Sorry, I don't know who this person is.",
    "I can't tell who this person is.",
)
"""Forget targets for forget rows without a ``forget_target`` of their own.

Every word is in the vocabulary of `hf_cagul.tiny`'s tokenizers (which lower-case text), so the
tiny models can learn them too.
"""

_MAX_LISTED_ROWS = 5


def load_image(value: Any) -> Image.Image:
    """Open one value of the ``image`` column as a fully decoded RGB `PIL.Image.Image`.

    Args:
        value: A PIL image; a path (``str`` or `os.PathLike`) to an image file; or a
            `datasets.Image` feature value that was not decoded: a dict with ``"bytes"``
            and/or ``"path"``.

    Returns:
        The image in RGB mode, with its pixels loaded (a truncated or corrupt file fails here,
        not later in a collator).

    Raises:
        ValueError: If the value is none of the above, the path does not exist, or the file or
            bytes are not an image PIL can read.
    """
    if isinstance(value, Image.Image):
        image = value
        source = "the PIL image"
    else:
        opened, source = _open(value)
        image = opened
    try:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{source} could not be decoded as an image ({err}).") from err


def _open(value: Any) -> tuple[Image.Image, str]:
    """Open a path or an undecoded `datasets.Image` value; return the image and its name."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return _open_with_pil(lambda: Image.open(io.BytesIO(data)), "the image bytes")
        if path is not None:
            return _open(path)
        raise ValueError("the image value is a dict with neither 'bytes' nor 'path'.")
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not path:
            raise ValueError("the image path is an empty string.")
        if not os.path.isfile(path):
            raise ValueError(f"the image file {path!r} does not exist.")
        return _open_with_pil(lambda: Image.open(path), f"the file {path!r}")
    if value is None:
        raise ValueError("the image is missing (None).")
    raise ValueError(
        f"an image must be a PIL image, a path string or a datasets.Image value, got "
        f"{type(value).__name__}."
    )


def _open_with_pil(opener: Callable[[], Image.Image], source: str) -> tuple[Image.Image, str]:
    try:
        return opener(), source
    except UnidentifiedImageError as err:
        raise ValueError(f"{source} is not an image PIL can read ({err}).") from err
    except OSError as err:
        raise ValueError(f"{source} could not be opened ({err}).") from err


def validate_dataset(dataset: Any, require_both_splits: bool = True) -> None:
    """Check that ``dataset`` follows the data contract (see the module docstring).

    Runs before any training: text columns are checked as whole columns, then every image is
    opened and decoded, row by row (datasets are small in this library's use).

    Args:
        dataset: A `datasets.Dataset`, or a `datasets.DatasetDict` (any mapping of split name
            to dataset) whose every split is one, with or without a `NEGATIVES_SPLIT`.
        require_both_splits: Require at least one ``"forget"`` and one ``"retain"`` row (what
            fitting needs; an evaluation set may hold only one of them). In a `DatasetDict`,
            the rows of all its splits but the negatives count together.

    Raises:
        TypeError: If ``dataset`` is not a `datasets.Dataset`-like object (no ``column_names``)
            nor a `datasets.DatasetDict`.
        ValueError: On the first problem found, naming the column, the row index (and, in a
            `DatasetDict`, the split) and the fix: a missing required column, an empty
            dataset, a question or answer that is not a non-empty string, a split other than
            ``"forget"``/``"retain"``, a missing split, an optional column of the wrong type,
            an image that cannot be opened, or negatives that are ``"forget"`` rows or show a
            forget subject.
    """
    if isinstance(dataset, Mapping):
        _validate_splits(dataset, require_both_splits)
    else:
        _validate_rows(dataset, require_both_splits)


def gate_negatives(splits: Mapping[str, Dataset]) -> Dataset:
    """The photos a gate is fitted and calibrated on as negatives: the retain photos of
    ``splits`` followed by its `NEGATIVES_SPLIT` (people in neither set) when it has one.

    Both kinds must pass the gate: retain photos are what the model must keep answering,
    strangers are most of what a served model sees. Only the ``image`` and ``question``
    columns are kept (the gate reads nothing else), and ``subject`` where every part has it
    (the calibration holds out a subject's photos together).

    Args:
        splits: A benchmark (`datasets.DatasetDict`, or any mapping of split name to dataset).

    Raises:
        ValueError: If ``splits`` has neither a ``"negatives"`` nor a ``"retain"`` split.
    """
    named = [splits[name] for name in (RETAIN_SPLIT, NEGATIVES_SPLIT) if name in splits]
    columns = [IMAGE_COLUMN, QUESTION_COLUMN]
    if named and all(SUBJECT_COLUMN in part.column_names for part in named):
        columns.append(SUBJECT_COLUMN)
    parts = [part.select_columns(columns) for part in named]
    if not parts:
        raise ValueError(
            f"The benchmark has neither a {NEGATIVES_SPLIT!r} nor a {RETAIN_SPLIT!r} split (it "
            f"has {', '.join(map(repr, splits)) or 'none'}): add photos of people the gate must "
            f"pass, as {NEGATIVES_SPLIT!r} (people in neither set) or {RETAIN_SPLIT!r} rows."
        )
    if len(parts) == 1:
        return parts[0]
    if parts[1].features != parts[0].features:
        # One image feature for both: a split read from disk may decode photos differently.
        parts[1] = parts[1].cast(parts[0].features)
    return concatenate_datasets(parts)


def _validate_splits(splits: Mapping[str, Any], require_both_splits: bool) -> None:
    """`validate_dataset` of every split, naming the split of the first problem found."""
    values: dict[str, set[Any]] = {}
    for name, dataset in splits.items():
        try:
            values[name] = _validate_rows(dataset, require_both_splits=False)
        except ValueError as err:
            raise ValueError(f"Split {name!r}: {err}") from err
    if NEGATIVES_SPLIT in splits:
        _check_negatives(splits, values[NEGATIVES_SPLIT])
    if require_both_splits:
        _require_both(set().union(*(v for name, v in values.items() if name != NEGATIVES_SPLIT)))


def _check_negatives(splits: Mapping[str, Any], values: set[Any]) -> None:
    """Refuse negatives that are forget rows or show a subject some forget row shows."""
    if values != {RETAIN_SPLIT}:
        raise ValueError(
            f"Split {NEGATIVES_SPLIT!r} holds {FORGET_SPLIT!r} rows: it is for photos of people "
            f"in neither the forget nor the retain set, whom the gate must pass. Mark them "
            f"{RETAIN_SPLIT!r}, or move photos of forget subjects to the forget splits."
        )
    negatives = splits[NEGATIVES_SPLIT]
    if SUBJECT_COLUMN not in negatives.column_names:
        return
    forgotten = {
        subject
        for name, dataset in splits.items()
        if name != NEGATIVES_SPLIT and SUBJECT_COLUMN in dataset.column_names
        for subject, split in zip(dataset[SUBJECT_COLUMN], dataset[SPLIT_COLUMN], strict=True)
        if split == FORGET_SPLIT and subject is not None
    }
    shared = sorted(forgotten.intersection(negatives[SUBJECT_COLUMN]))
    if shared:
        listed = ", ".join(map(repr, shared[:_MAX_LISTED_ROWS]))
        more = (
            f" and {len(shared) - _MAX_LISTED_ROWS} more" if len(shared) > _MAX_LISTED_ROWS else ""
        )
        raise ValueError(
            f"Split {NEGATIVES_SPLIT!r} shows forget subject(s) {listed}{more}: a gate "
            "fitted on them would learn to pass the people it must flag. Drop their "
            f"rows from {NEGATIVES_SPLIT!r}."
        )


def _validate_rows(dataset: Any, require_both_splits: bool) -> set[Any]:
    """Check one set's columns, values and images; return the values of its ``split`` column."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(
            f"validate_dataset expects a datasets.Dataset or DatasetDict, got "
            f"{type(dataset).__name__}. Build one with "
            "`datasets.Dataset.from_dict({'image': ..., 'question': ..., ...})`."
        )
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ValueError(
            f"The dataset lacks the required column(s) {', '.join(map(repr, missing))}; it has "
            f"{', '.join(map(repr, columns)) or 'no columns'}. Every row needs "
            f"{', '.join(map(repr, REQUIRED_COLUMNS))} (rename yours with "
            "`dataset.rename_column(old, new)`)."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset has no rows: it needs forget and/or retain rows.")

    for column in (QUESTION_COLUMN, ANSWER_COLUMN):
        _check_column(
            dataset,
            column,
            lambda value: isinstance(value, str) and bool(value.strip()),
            "must hold non-empty strings",
            "Drop or fix these rows (e.g. `dataset.filter(...)`).",
        )
    splits = _check_column(
        dataset,
        SPLIT_COLUMN,
        lambda value: value in SPLITS,
        f"must be {FORGET_SPLIT!r} or {RETAIN_SPLIT!r}",
        f"Mark rows of subjects to forget {FORGET_SPLIT!r} and all others {RETAIN_SPLIT!r}.",
    )
    if require_both_splits:
        _require_both(splits)
    for column in OPTIONAL_COLUMNS:
        if column in columns:
            _check_column(
                dataset,
                column,
                lambda value: value is None or isinstance(value, str),
                "must hold strings or None",
                "Use None where a row has no value.",
            )
    _check_images(dataset)
    return splits


def _require_both(values: set[Any]) -> None:
    """Refuse a set without ``"forget"`` or without ``"retain"`` rows (fitting needs both)."""
    for split in SPLITS:
        if split not in values:
            raise ValueError(
                f"The dataset has no rows with split {split!r} (column {SPLIT_COLUMN!r}); "
                f"fitting a CAGUL adapter needs both {FORGET_SPLIT!r} rows (images of the "
                f"subjects to forget) and {RETAIN_SPLIT!r} rows (behaviour to keep). Add "
                f"{split!r} rows, or concatenate the two sets with "
                "`datasets.concatenate_datasets`."
            )


def _check_column(
    dataset: Any,
    column: str,
    is_valid: Callable[[Any], bool],
    rule: str,
    fix: str,
) -> set[Any]:
    """Raise if a value of ``column`` breaks ``rule``; return the column's distinct values."""
    values = list(dataset[column])
    bad = [index for index, value in enumerate(values) if not is_valid(value)]
    if bad:
        first = bad[0]
        more = ""
        if len(bad) > 1:
            listed = ", ".join(map(str, bad[1 : 1 + _MAX_LISTED_ROWS]))
            extra = len(bad) - 1 - _MAX_LISTED_ROWS
            more = f" (also row(s) {listed}{f' and {extra} more' if extra > 0 else ''})"
        raise ValueError(
            f"Column {column!r} {rule}, but row {first} holds {_describe(values[first])}"
            f"{more}. {fix}"
        )
    try:
        return set(values)
    except TypeError:  # unhashable values (only reachable for valid-but-odd columns)
        return set()


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the empty string {value!r}" if not value.strip() else repr(value)
    return f"{value!r} of type {type(value).__name__}"


def _check_images(dataset: Any) -> None:
    """Open and decode every image, naming the first row that fails."""
    images = dataset.select_columns([IMAGE_COLUMN])
    feature = getattr(images, "features", {}).get(IMAGE_COLUMN)
    if isinstance(feature, ImageFeature) and feature.decode:
        # Read the raw bytes/paths so a broken file fails in load_image, with our message,
        # rather than inside datasets' decoder.
        images = images.cast_column(IMAGE_COLUMN, ImageFeature(decode=False))
    for index, row in enumerate(images):
        try:
            load_image(row[IMAGE_COLUMN])
        except ValueError as err:
            raise ValueError(
                f"Column {IMAGE_COLUMN!r}, row {index}: {err} Each row needs one image: a PIL "
                "image, a datasets.Image value, or the path of a readable image file."
            ) from err

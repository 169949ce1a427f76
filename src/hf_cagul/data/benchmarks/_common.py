"""What the benchmark converters share: finding the files, reading them, building the splits."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, Value
from datasets import Sequence as SequenceFeature

from hf_cagul.data.schema import FORGET_SPLIT, RETAIN_SPLIT

GENERATION_TASK = "generation"
MULTIPLE_CHOICE_TASK = "multiple_choice"
FILL_BLANK_TASK = "fill_blank"
TASKS: tuple[str, ...] = (GENERATION_TASK, MULTIPLE_CHOICE_TASK, FILL_BLANK_TASK)
"""Values of the ``task`` column the converters write."""

ROW_FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "split": Value("string"),
        "subject": Value("string"),
        "kind": Value("string"),
        "task": Value("string"),
        "keywords": SequenceFeature(Value("string")),
        "paraphrased_answer": Value("string"),
        "perturbed_answers": SequenceFeature(Value("string")),
        "options": SequenceFeature(Value("string")),
        "correct_option": Value("int64"),
    }
)
"""Columns of every converted split: the data contract plus what the evaluation suite reads."""

_OPTIONAL_ROW_COLUMNS = (
    "keywords",
    "paraphrased_answer",
    "perturbed_answers",
    "options",
    "correct_option",
)


def select_where(dataset: Dataset, column: str, keep: Callable[[Any], bool]) -> Dataset:
    """The rows whose ``column`` value passes ``keep``, in order.

    Reads that one column only (a `Dataset.filter` would decode every row's image).
    """
    indices = [index for index, value in enumerate(dataset[column]) if keep(value)]
    return dataset if len(indices) == len(dataset) else dataset.select(indices)


class BenchmarkLayoutError(ValueError):
    """A benchmark copy does not have the published layout; the message shows the layout."""


def layout_error(benchmark: str, problem: str, layout: str) -> BenchmarkLayoutError:
    """An error naming what is wrong and the layout the converter expects."""
    return BenchmarkLayoutError(
        f"{benchmark}: {problem}\nExpected layout (the published one):\n{layout.strip()}"
    )


def resolve_source(
    source: str | os.PathLike[str],
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
) -> Path:
    """A local directory for ``source``: the directory itself, or a Hub dataset snapshot.

    Args:
        source: A local directory, or the id of a dataset repo on the Hub (``"org/name"``).
        allow_patterns: Files of the Hub repo to download (glob patterns); None: all.
        revision: Hub branch, tag or commit.

    Raises:
        OSError: If ``source`` is neither a directory nor a reachable Hub dataset repo.
    """
    local = Path(source)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(
                os.fspath(source),
                repo_type="dataset",
                revision=revision,
                allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            )
        )
    except HFValidationError as err:
        raise OSError(
            f"{os.fspath(source)!r} is neither a local directory nor a Hub dataset id "
            f"('org/name'): {err}"
        ) from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"No dataset repo {os.fspath(source)!r} on the Hub (private? log in with "
            "`hf auth login`), and no local directory of that name."
        ) from err


def read_parquet_rows(directory: Path) -> list[dict[str, Any]]:
    """Every row of the ``*.parquet`` files directly in ``directory`` (sorted by file name)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def config_directory(root: Path, names: Iterable[str]) -> Path | None:
    """The first of ``root / name`` that holds parquet files, or None."""
    for name in names:
        candidate = root / name
        if candidate.is_dir() and any(candidate.glob("*.parquet")):
            return candidate
    return None


def qa_row(
    image: Any,
    question: str,
    answer: str,
    split: str,
    subject: str,
    task: str = GENERATION_TASK,
    **optional: Any,
) -> dict[str, Any]:
    """One row in the converters' format (`ROW_FEATURES`).

    Raises:
        TypeError: For an unknown optional column, or a question or answer that is not a string
            (a missing field of the benchmark's files).
    """
    unknown = set(optional) - set(_OPTIONAL_ROW_COLUMNS)
    if unknown:
        raise TypeError(f"qa_row got unknown column(s) {sorted(unknown)}")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError(f"a question and its answer must be strings, got {question!r} / {answer!r}")
    row = {
        "image": image,
        "question": question,
        "answer": answer,
        "split": split,
        "subject": subject,
        "kind": "private",
        "task": task,
    }
    row.update({column: optional.get(column) for column in _OPTIONAL_ROW_COLUMNS})
    return row


def as_list(value: Any) -> list[str] | None:
    """A list of strings from a list, a single string, or None (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def build_splits(rows: Mapping[str, list[dict[str, Any]]]) -> DatasetDict:
    """A `DatasetDict` of the converted rows, one split per key.

    Optional columns that no row of a split fills are dropped from that split, so the
    evaluation suite only computes the metrics the benchmark supports.
    """
    splits = {}
    for name, split_rows in rows.items():
        dataset = Dataset.from_list(split_rows, features=ROW_FEATURES)
        empty = [
            column
            for column in _OPTIONAL_ROW_COLUMNS
            if all(value is None for value in dataset[column])
        ]
        splits[name] = dataset.remove_columns(empty)
    return DatasetDict(splits)


def check_both_splits(benchmark: str, rows: Mapping[str, list[dict[str, Any]]], hint: str) -> None:
    """Refuse a conversion that yields no forget or no retain rows."""
    for split in (FORGET_SPLIT, RETAIN_SPLIT):
        if not rows.get(split):
            raise BenchmarkLayoutError(f"{benchmark}: the conversion found no {split} rows. {hint}")


def _number_in(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else 0


def forget_percent(
    benchmark: str, forget_split: str, forget_splits: Sequence[str], layout: str
) -> int:
    """The percentage ``forget_split`` names, from its digits (``"forget_10"``, ``"10"``: 10).

    Raises:
        BenchmarkLayoutError: If that is not the percentage of one of ``forget_splits``.
    """
    percent = _number_in(forget_split)
    if percent not in {_number_in(name) for name in forget_splits}:
        raise layout_error(
            benchmark,
            f"forget split {forget_split!r} is not one of {', '.join(forget_splits)}.",
            layout,
        )
    return percent


RowConverter = Callable[[dict[str, Any], str, str], list[dict[str, Any]]]
"""``(parquet row, split, folder name) -> converted rows`` of one benchmark."""


def convert_parquet_configs(
    benchmark: str,
    layout: str,
    source: str | os.PathLike[str],
    revision: str | None,
    configs: Mapping[str, str],
    convert: RowConverter,
    hint: str,
    variants: Sequence[str] = ("",),
) -> DatasetDict:
    """Splits from a benchmark published as one parquet folder per configuration.

    Args:
        benchmark: The benchmark's name, for errors.
        layout: The published layout, for errors.
        source: A local copy or a Hub dataset id (only the configurations' folders are fetched).
        revision: Hub revision, for a Hub id.
        configs: The configuration (folder name) of each split.
        convert: Converts each parquet row of a split (it raises for a malformed row).
        hint: What `check_both_splits` adds when a split comes out empty.
        variants: Suffixes of the folder names to read, the first present one wins (``""``:
            the configuration's own folder).

    Raises:
        BenchmarkLayoutError: If a configuration has no parquet folder, or a split no rows.
    """
    patterns = [f"{config}{suffix}/*" for config in configs.values() for suffix in variants]
    root = resolve_source(source, allow_patterns=patterns, revision=revision)
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, config in configs.items():
        directory = config_directory(root, [f"{config}{suffix}" for suffix in variants])
        if directory is None:
            raise layout_error(benchmark, f"{root} has no parquet files in {config}/.", layout)
        rows[split] = []
        for row in read_parquet_rows(directory):
            rows[split] += convert(row, split, directory.name)
    check_both_splits(benchmark, rows, hint)
    return build_splits(rows)

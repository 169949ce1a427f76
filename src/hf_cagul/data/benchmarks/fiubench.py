"""FIUBench (Ma et al., 2024): fictitious faces with private QA, in the data contract.

Published layout (the FIUBench GitHub repo keeps it under ``dataset/``; a copy with the two
JSON files at its root works too)::

    full.json    a list of faces, each {"unique_id": "00044363", "image_path": "...",
                 "qa_list": [{"question": ..., "answer": ..., "paraphrased_answer": ...,
                 "perturbed_answer": [...], "keywords": [...]}, ...]}
    split.json   {"forget1": [ids], "forget5": [ids], "forget10": [ids]}
    <images>     image_path is relative to the JSON's folder (or the copy's root) or absolute

Faces in no forget list are the retain faces, as in the published data module. Only the
layout above is read; how images are named beyond ``image_path`` does not matter.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from hf_cagul.data.benchmarks._common import (
    as_list,
    build_splits,
    check_both_splits,
    layout_error,
    qa_row,
    resolve_source,
)
from hf_cagul.data.schema import FORGET_SPLIT, RETAIN_SPLIT

NAME = "FIUBench"
FORGET_SPLITS: tuple[str, ...] = ("forget1", "forget5", "forget10")
"""The split lists of ``split.json``."""
DEFAULT_FORGET_SPLIT = "forget10"

LAYOUT = """
<root>/full.json   (or <root>/dataset/full.json): a JSON list of faces
    {"unique_id": "00044363" (8 digits), "image_path": "<path relative to the JSON>",
     "qa_list": [{"question", "answer", "paraphrased_answer", "perturbed_answer": [...],
                  "keywords": [...]}]}
<root>/split.json  (next to full.json): {"forget1": [ids], "forget5": [ids], "forget10": [ids]}
"""

_ID = re.compile(r"\d{8}")


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "dataset" / name):
        if candidate.is_file():
            return candidate
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise layout_error(NAME, f"{path} is not valid JSON ({err}).", LAYOUT) from err


def _face_id(value: Any, where: str) -> str:
    text = f"{value:08d}" if isinstance(value, int) else str(value)
    if not _ID.fullmatch(text):
        raise layout_error(NAME, f"{where} holds the id {value!r}, not 8 digits.", LAYOUT)
    return text


def _image(path_value: Any, json_dir: Path, root: Path, face: str) -> str:
    if not isinstance(path_value, str) or not path_value:
        raise layout_error(NAME, f"face {face} has no 'image_path' string.", LAYOUT)
    path = Path(path_value)
    candidates = [path] if path.is_absolute() else [json_dir / path, root / path]
    for candidate in candidates:
        if candidate.is_file():
            return os.fspath(candidate)
    raise layout_error(
        NAME,
        f"the image of face {face} ({path_value!r}) is not at {' or '.join(map(str, candidates))}.",
        LAYOUT,
    )


def load_fiubench(
    source: str | os.PathLike[str],
    forget_split: str = DEFAULT_FORGET_SPLIT,
    revision: str | None = None,
) -> DatasetDict:
    """FIUBench as ``forget`` / ``retain`` splits in the data contract.

    Each QA pair of a face is one row: ``image`` (the face's image path), ``question``,
    ``answer``, ``split``, ``subject`` (the face's 8-digit id), ``task="generation"``,
    ``kind="private"`` and, where the QA pair has them, ``keywords``, ``paraphrased_answer``
    and ``perturbed_answers`` (for keyword accuracy, probability and truth ratio).

    Args:
        source: A local copy (see the module docstring for the layout) or a Hub dataset id.
        forget_split: ``"forget1"``, ``"forget5"`` or ``"forget10"``.
        revision: Hub revision, for a Hub id.

    Raises:
        BenchmarkLayoutError: If the copy does not have the published layout (the message
            shows it), ``forget_split`` is not in ``split.json``, or a forget id has no face.
    """
    root = resolve_source(source, revision=revision)
    full, splits_file = _find(root, "full.json"), _find(root, "split.json")
    if full is None or splits_file is None:
        missing = "full.json" if full is None else "split.json"
        raise layout_error(NAME, f"{root} has no {missing}.", LAYOUT)
    faces, lists = _read_json(full), _read_json(splits_file)
    if not isinstance(faces, list) or not isinstance(lists, dict):
        raise layout_error(
            NAME, "full.json must hold a list of faces and split.json an object.", LAYOUT
        )
    if forget_split not in lists:
        raise layout_error(
            NAME,
            f"split.json has no list {forget_split!r} (it has {sorted(lists)}); choose one of "
            f"{', '.join(FORGET_SPLITS)}.",
            LAYOUT,
        )
    forget_ids = {_face_id(i, f"split.json[{forget_split!r}]") for i in lists[forget_split]}
    any_forget = {
        _face_id(i, f"split.json[{name!r}]")
        for name in FORGET_SPLITS
        if name in lists
        for i in lists[name]
    }
    rows: dict[str, list[dict[str, Any]]] = {FORGET_SPLIT: [], RETAIN_SPLIT: []}
    seen: set[str] = set()
    for index, face in enumerate(faces):
        if not isinstance(face, dict) or "unique_id" not in face or "qa_list" not in face:
            raise layout_error(
                NAME, f"face {index} of full.json lacks 'unique_id' or 'qa_list'.", LAYOUT
            )
        face_id = _face_id(face["unique_id"], f"full.json face {index}")
        split = FORGET_SPLIT if face_id in forget_ids else RETAIN_SPLIT
        if split == RETAIN_SPLIT and face_id in any_forget:
            continue  # a face of another forget list is neither forgotten nor kept
        seen.add(face_id)
        image = _image(face.get("image_path"), full.parent, root, face_id)
        for qa in face["qa_list"]:
            question, answer = qa.get("question", qa.get("q")), qa.get("answer", qa.get("a"))
            if not isinstance(question, str) or not isinstance(answer, str):
                raise layout_error(
                    NAME, f"a QA pair of face {face_id} lacks 'question' or 'answer'.", LAYOUT
                )
            rows[split].append(
                qa_row(
                    image,
                    question,
                    answer,
                    split,
                    face_id,
                    keywords=as_list(qa.get("keywords")),
                    paraphrased_answer=qa.get("paraphrased_answer"),
                    perturbed_answers=as_list(qa.get("perturbed_answer")),
                )
            )
    missing_ids = sorted(forget_ids - seen)
    if missing_ids:
        raise layout_error(
            NAME, f"{forget_split} lists ids with no face in full.json: {missing_ids[:5]}.", LAYOUT
        )
    check_both_splits(NAME, rows, "Each split needs faces with a non-empty 'qa_list'.")
    return build_splits(rows)

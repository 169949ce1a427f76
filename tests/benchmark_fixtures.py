"""Small copies of FIUBench, MLLMU-Bench and CLEAR in their published file layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(seed: int, size: int = 32) -> bytes:
    """A small distinct PNG image."""
    image = Image.new("RGB", (size, size), ((seed * 70) % 256, (seed * 30) % 256, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FIU_IDS = ["00044363", "00012345", "00099999", "00000007"]


def write_fiubench(root: Path) -> Path:
    """FIUBench: dataset/full.json, dataset/split.json, dataset/images/<id>.png."""
    dataset = root / "dataset"
    (dataset / "images").mkdir(parents=True)
    faces = []
    for index, face_id in enumerate(FIU_IDS):
        (dataset / "images" / f"{face_id}.png").write_bytes(png(index))
        faces.append(
            {
                "unique_id": face_id,
                "image_path": f"images/{face_id}.png",
                "caption": "a face",
                "qa_list": [
                    {
                        "question": "where was this person born ?",
                        "answer": f"this person was born in city {index} .",
                        "paraphrased_question": "what is the birthplace ?",
                        "paraphrased_answer": f"the birthplace is city {index} .",
                        "perturbed_answer": ["born in paris .", "born in rome ."],
                        "keywords": [f"city {index}"],
                    },
                    {
                        "question": "what is the job of this person ?",
                        "answer": "a doctor .",
                        "paraphrased_answer": "works as a doctor .",
                        "perturbed_answer": ["a teacher .", "a pilot ."],
                        "keywords": ["doctor"],
                    },
                ],
            }
        )
    (dataset / "full.json").write_text(json.dumps(faces))
    split = {"forget1": FIU_IDS[:1], "forget5": FIU_IDS[:1], "forget10": FIU_IDS[:2]}
    (dataset / "split.json").write_text(json.dumps(split))
    return root


def _write_parquet(directory: Path, rows: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), directory / "train-00000-of-00001.parquet")


def mllmu_profile(profile_id: str, seed: int) -> dict[str, Any]:
    """One MLLMU-Bench profile row (image-textual and pure-text questions of each task)."""
    options = {"A": "a doctor", "B": "a pilot", "C": "a teacher", "D": "a farmer"}
    return {
        "ID": profile_id,
        "image": {"bytes": png(seed), "path": f"{profile_id}.png"},
        "biography": "a fictitious person .",
        "Classification_Task": {
            "Image_Textual_Questions": [
                {
                    "Question": "what is the job of this person ?",
                    "Options": options,
                    "Correct_Answer": "B",
                },
            ],
            "Pure_Text_Questions": [
                {
                    "Question": f"what is the job of {profile_id} ?",
                    "Options": options,
                    "Correct_Answer": "B",
                },
            ],
        },
        "Generation_Task": [
            {
                "Type": "Image_Textual",
                "Question": "where does this person live ?",
                "Ground_Truth": "in paris .",
            },
            {
                "Type": "Pure_Text",
                "Question": f"where does {profile_id} live ?",
                "Ground_Truth": "in paris .",
            },
        ],
        "Mask_Task": [
            {
                "Type": "Image_Textual",
                "Question": "this person lives in __ .",
                "Ground_Truth": "paris",
            },
            {
                "Type": "Pure_Text",
                "Question": f"{profile_id} lives in __ .",
                "Ground_Truth": "paris",
            },
        ],
    }


def write_mllmu(root: Path, forget_percent: int = 10) -> Path:
    """MLLMU-Bench: forget_<p>/ and retain_<100-p>/ parquet folders."""
    _write_parquet(root / f"forget_{forget_percent}", [mllmu_profile("1", 1)])
    _write_parquet(
        root / f"retain_{100 - forget_percent}", [mllmu_profile("2", 2), mllmu_profile("3", 3)]
    )
    return root


def clear_photo(name: str, seed: int, perturbed: bool) -> dict[str, Any]:
    """One CLEAR row; ``perturbed`` adds the *_perturbed configurations' columns."""
    row: dict[str, Any] = {
        "image": {"bytes": png(seed), "path": None},
        "caption": f"{name} smiles in a red room .",
        "name": name,
    }
    if perturbed:
        row["paraphrased_caption"] = f"in a red room , {name} smiles ."
        row["perturbed_captions"] = ["a man sits .", "a woman runs ."]
        row["perturbed_names"] = ["anna", "bob"]
    return row


def write_clear(root: Path, perturbed_forget: bool = True) -> Path:
    """CLEAR: forget10_perturbed/ (or forget10/) and retain90/ parquet folders."""
    forget = "forget10_perturbed" if perturbed_forget else "forget10"
    _write_parquet(root / forget, [clear_photo("zed", 1, perturbed_forget)])
    _write_parquet(root / "retain90", [clear_photo("amy", 2, False), clear_photo("max", 3, False)])
    return root

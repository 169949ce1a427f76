"""Where the inspector finds a demo run's files (``hf-cagul demo``'s output directory).

A demo directory holds ``stage1/`` (the stage-1 VLM and its processor, `save_pretrained`),
``adapter/`` (the fitted adapter, `CagulModel.save_pretrained`), ``metrics.json`` (the run
report's metrics) and ``examples/`` (held-out photos and their questions, `save_examples`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["DemoDirectory"]

_EXAMPLES_INDEX = "examples.json"


@dataclass(frozen=True)
class DemoDirectory:
    """The files of one demo run, under ``root``.

    Attributes:
        root: The demo's output directory.
    """

    root: Path

    @property
    def stage1(self) -> Path:
        """The stage-1 VLM and processor."""
        return self.root / "stage1"

    @property
    def adapter(self) -> Path:
        """The fitted adapter."""
        return self.root / "adapter"

    @property
    def examples_dir(self) -> Path:
        """Held-out photos (PNG) and ``examples.json``, their questions."""
        return self.root / "examples"

    def check(self) -> None:
        """Raise a clear error when the stage-1 model or the adapter is missing.

        Raises:
            FileNotFoundError: naming what is missing and how to make it.
        """
        missing = [path for path in (self.stage1, self.adapter) if not path.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{self.root} is not a complete demo directory: {', '.join(map(str, missing))} "
                "missing. Run `hf-cagul demo --output-dir DIR` first, or pass --model and "
                "--adapter instead of --demo-dir."
            )

    def metrics(self) -> dict[str, Any] | None:
        """The run's ``metrics.json``, or ``None`` when it has none."""
        path = self.root / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def examples(self) -> list[tuple[Path, str]]:
        """The saved ``(photo path, question)`` examples, in saved order (none if unsaved)."""
        index = self.examples_dir / _EXAMPLES_INDEX
        if not index.is_file():
            return []
        entries = json.loads(index.read_text(encoding="utf-8"))
        return [(self.examples_dir / entry["file"], entry["question"]) for entry in entries]

    def save_examples(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Path]:
        """Write photos as PNG (lossless, so the app sees the very pixels) and their questions.

        Args:
            images: Held-out photos.
            questions: One question per photo.

        Returns:
            The photo paths.
        """
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} photos but {len(questions)} questions.")
        self.examples_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for index, (image, question) in enumerate(zip(images, questions, strict=True)):
            name = f"photo-{index:03d}.png"
            image.convert("RGB").save(self.examples_dir / name)
            entries.append({"file": name, "question": question})
        text = json.dumps(entries, indent=2, ensure_ascii=False)
        (self.examples_dir / _EXAMPLES_INDEX).write_text(text + "\n", encoding="utf-8")
        return [self.examples_dir / entry["file"] for entry in entries]

"""Photo augmentation: the same person, a slightly different photo.

A gate fitted on a handful of photos per person learns those photos; shifting, cropping,
relighting, adding noise and re-compressing them while fitting teaches it the person instead,
so it also flags photos it has never seen (the held-out photos of the benchmarks).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance


@dataclass
class PhotoAugmentation:
    """A random photometric and geometric perturbation per call, reproducible from ``seed``.

    The last four options are off by default; while off they draw nothing from the stream, so
    a given ``seed`` gives the same photos as before they existed.

    Args:
        seed: Seed of the random stream (each call draws the next perturbation).
        max_shift: Largest translation, as a fraction of the side.
        min_crop: Smallest kept fraction of each side (then resized back).
        brightness: Range of the brightness factor.
        max_noise: Largest standard deviation of the Gaussian pixel noise.
        jpeg_probability: Chance of a JPEG round trip at quality ``jpeg_quality``.
        jpeg_quality: Range of the JPEG quality (both ends included).
        flip_probability: Chance of a horizontal flip.
        max_rotation: Largest rotation, in degrees either way (the corners take the colour of
            the photo's top-left pixel).
        contrast: Range of the contrast factor.
        saturation: Range of the colour saturation factor.
    """

    seed: int = 0
    max_shift: float = 0.1
    min_crop: float = 0.8
    brightness: tuple[float, float] = (0.7, 1.3)
    max_noise: float = 15.0
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)
    flip_probability: float = 0.0
    max_rotation: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, image: Image.Image) -> Image.Image:
        """A perturbed copy of ``image`` (RGB, same size)."""
        rng = self._rng
        width, height = image.size
        keep = rng.uniform(self.min_crop, 1.0)
        crop_w, crop_h = max(1, round(width * keep)), max(1, round(height * keep))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        image = image.convert("RGB").crop((left, top, left + crop_w, top + crop_h))
        image = image.resize((width, height))
        shift_x = int(rng.integers(-1, 2) * rng.uniform(0, self.max_shift) * width)
        shift_y = int(rng.integers(-1, 2) * rng.uniform(0, self.max_shift) * height)
        image = image.transform(
            image.size, Image.Transform.AFFINE, (1, 0, shift_x, 0, 1, shift_y), fillcolor=None
        )
        if self.flip_probability and rng.random() < self.flip_probability:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.max_rotation:
            corner = image.getpixel((0, 0))
            angle = rng.uniform(-self.max_rotation, self.max_rotation)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=corner)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(*self.brightness))
        if self.contrast != (1.0, 1.0):
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(*self.contrast))
        if self.saturation != (1.0, 1.0):
            image = ImageEnhance.Color(image).enhance(rng.uniform(*self.saturation))
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, rng.uniform(0, self.max_noise), pixels.shape).astype(
            np.float32
        )
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if rng.random() < self.jpeg_probability:
            buffer = io.BytesIO()
            low, high = self.jpeg_quality
            image.save(buffer, format="JPEG", quality=int(rng.integers(low, high + 1)))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image


AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "photo": {},
    "views": {
        "min_crop": 0.75,
        "flip_probability": 0.5,
        "max_rotation": 20.0,
        "contrast": (0.7, 1.3),
        "saturation": (0.6, 1.4),
        "jpeg_probability": 0.5,
        "jpeg_quality": (20, 90),
    },
}
"""Named `PhotoAugmentation` presets (``CagulTrainingConfig.gate_augmentation``): ``"photo"``,
the defaults (shifts, crops, lighting, noise, re-compression); ``"views"``, those plus
horizontal flips, rotations of up to 20 degrees, contrast and saturation shifts, deeper crops
and harsher re-compression: every transformation of the black-box attacker
(`hf_cagul.evaluation.attacks.BLACK_BOX_VIEWS`), so a gate fitted on them has seen its views."""


def named_augmentation(name: str, seed: int) -> PhotoAugmentation:
    """The `AUGMENTATIONS` preset ``name`` drawing from ``seed``.

    Raises:
        ValueError: If ``name`` is not a preset.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}."
        )
    return PhotoAugmentation(seed=seed, **AUGMENTATIONS[name])

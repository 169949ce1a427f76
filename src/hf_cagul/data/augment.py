"""Photo augmentation: the same person, a slightly different photo.

A gate fitted on a handful of photos per person learns those photos; shifting, cropping,
relighting, adding noise and re-compressing them while fitting teaches it the person instead,
so it also flags photos it has never seen (the held-out photos of the benchmarks).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageEnhance


@dataclass
class PhotoAugmentation:
    """A random photometric and geometric perturbation per call, reproducible from ``seed``.

    Args:
        seed: Seed of the random stream (each call draws the next perturbation).
        max_shift: Largest translation, as a fraction of the side.
        min_crop: Smallest kept fraction of each side (then resized back).
        brightness: Range of the brightness factor.
        max_noise: Largest standard deviation of the Gaussian pixel noise.
        jpeg_probability: Chance of a JPEG round trip at quality 30-90.
    """

    seed: int = 0
    max_shift: float = 0.1
    min_crop: float = 0.8
    brightness: tuple[float, float] = (0.7, 1.3)
    max_noise: float = 15.0
    jpeg_probability: float = 0.3
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
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(*self.brightness))
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, rng.uniform(0, self.max_noise), pixels.shape).astype(
            np.float32
        )
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if rng.random() < self.jpeg_probability:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image

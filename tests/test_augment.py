"""PhotoAugmentation: a different photo of the same scene, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from vlm_inputs import image

from hf_cagul.data import AUGMENTATIONS, PhotoAugmentation, named_augmentation


def test_augmentation_is_reproducible_and_varies() -> None:
    photo = image(0, size=48)
    first, second = PhotoAugmentation(seed=1), PhotoAugmentation(seed=1)
    a, b = first(photo), second(photo)
    assert a.size == photo.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(photo))
    assert not np.array_equal(np.asarray(first(photo)), np.asarray(a))  # next draw differs


def test_augmentation_keeps_the_scene_recognisable() -> None:
    photo = image(3, size=64)
    augmented = PhotoAugmentation(seed=0, max_noise=0.0, jpeg_probability=0.0)(photo)
    original = np.asarray(photo, dtype=np.float32).mean(axis=(0, 1))
    changed = np.asarray(augmented, dtype=np.float32).mean(axis=(0, 1))
    assert np.abs(original - changed).max() < 0.35 * original.max()


def test_named_augmentations() -> None:
    photo = image(0, size=32)
    photo_preset = named_augmentation("photo", seed=4)(photo)
    assert np.array_equal(np.asarray(photo_preset), np.asarray(PhotoAugmentation(seed=4)(photo)))
    views = named_augmentation("views", seed=4)
    assert views.flip_probability == AUGMENTATIONS["views"]["flip_probability"] > 0
    assert views(photo).size == photo.size
    with pytest.raises(ValueError, match="Unknown augmentation 'mixup'; choose one of photo"):
        named_augmentation("mixup", seed=0)

"""The gate fitted apart from the encoder, on cached features, with a calibrated threshold.

The VLM is frozen, so what a gate reads about a photo (`CagulModel.gate_inputs`) does not change
while the adapter is fitted: it is computed once for every photo and for augmented variants of
it, kept in a `GateFeatureCache`, and the gate then trains on that cache for many epochs in
seconds (`fit_gate`), with a class-balanced binary cross-entropy (forget photos positive,
negatives negative). With a target false-positive rate, a part of the negatives is split off
before fitting and never fitted on, whole people at a time where photos name their subject; the
gate threshold is then set to the lowest one whose false-positive rate on them is at most the
target (`calibrate_threshold`).

Only `CagulModel.gate_inputs` and the gate module are called, so any registered gate class
works; a gate without trainable parameters is left as it is.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image
from torch import nn

from hf_cagul.data import ForgetRetainDataCollator, PhotoAugmentation, named_augmentation
from hf_cagul.data.schema import (
    ANSWER_COLUMN,
    FORGET_TARGET_COLUMN,
    IMAGE_COLUMN,
    QUESTION_COLUMN,
    SUBJECT_COLUMN,
    load_image,
)
from hf_cagul.devices import input_device
from hf_cagul.evaluation.metrics import rates_at_threshold, roc_auc
from hf_cagul.gates import LANGUAGE_STATE, Gate, GateEnsemble, GateInputs
from hf_cagul.losses import half_per_class
from hf_cagul.model import CagulModel

__all__ = [
    "GateFeatureCache",
    "GateFitReport",
    "GateFitSettings",
    "Photo",
    "calibrate_threshold",
    "calibration_split",
    "fit_gate",
    "forget_photos_of",
    "negative_photos_of",
    "unique_photos",
]

_T = TypeVar("_T")
_FLOAT32_BELOW_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
_SMALLEST_FLOAT32 = float(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class Photo:
    """One distinct photo and a question about it (the prompt its features are computed with).

    Attributes:
        image: The photo.
        question: A question about it, from its first row (the photo itself is cached with it).
        key: What tells it apart from other photos (a SHA-256 of its mode, size and pixels).
        questions: Every distinct question its rows ask, in order (``question`` first). A gate
            that reads the language model's state sees a different state for each, so its
            augmented variants cycle through them.
        kept: Those of ``questions`` whose forget target is the true answer itself (a visual
            question): nothing private to leak, so a gate that reads the question may leave
            them to the bare model (`GateFitSettings.kept_as_negatives`).
        subject: Who the photo shows (its first row's ``subject``), or None when unknown. The
            calibration holds out a negative subject's photos together
            (`GateFitSettings.calibration_by_subject`).
    """

    image: Image.Image
    question: str
    key: str
    questions: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    subject: str | None = None

    def variant_question(self, variant: int) -> str:
        """The question asked with augmented variant ``variant`` (0, 1, ...) of the photo: the
        questions after ``question`` in turn, so the photo and ``len(questions) - 1`` variants
        ask each once."""
        questions = self.questions or (self.question,)
        return questions[(variant + 1) % len(questions)]


def unique_photos(
    images: Iterable[Any],
    questions: Iterable[str],
    kept: Iterable[bool] | None = None,
    subjects: Iterable[str | None] | None = None,
) -> list[Photo]:
    """The distinct photos among ``images`` (first occurrence kept, in order), with a question.

    Several rows (questions) often share a photo; the gate scores photos, so each counts once,
    with every question its rows ask (`Photo.questions`). Photos are told apart by a SHA-256 of
    their mode, size and pixels.

    Args:
        images: Photos in any form `hf_cagul.data.schema.load_image` opens.
        questions: The question of each photo's row.
        kept: Per row, whether its forget target is its true answer (`Photo.kept`); None: no
            row's is.
        subjects: Per row, who its photo shows (`Photo.subject`: the first row's); None:
            unknown.
    """
    found: dict[str, tuple[Image.Image, list[str], list[str], str | None]] = {}
    questions = list(questions)
    flags = [False] * len(questions) if kept is None else list(kept)
    who = [None] * len(questions) if subjects is None else list(subjects)
    for value, question, is_kept, subject in zip(images, questions, flags, who, strict=True):
        image = load_image(value)
        key = photo_key(image)
        _, asked, kept_here, _ = found.setdefault(key, (image, [], [], subject))
        if question not in asked:
            asked.append(question)
            if is_kept:
                kept_here.append(question)
    return [
        Photo(image, asked[0], key, tuple(asked), tuple(kept_here), subject)
        for key, (image, asked, kept_here, subject) in found.items()
    ]


def negative_photos_of(rows: Dataset, taught: Iterable[Any] = ()) -> list[Photo]:
    """The distinct photos of the negative ``rows``, each with the questions its rows ask and,
    where ``rows`` has a ``subject`` column, its subject unless the adapter is fitted on that
    subject (``taught``: the subjects of the training rows, retain people).

    The calibration (`calibration_split`) holds a subject's photos out together: a person seen
    nowhere else is held out whole, as the served gate meets most people, while a retain
    person, whose other photos the gate is fitted on at serving as well, is split photo by
    photo.
    """
    if SUBJECT_COLUMN not in rows.column_names:
        return unique_photos(rows[IMAGE_COLUMN], rows[QUESTION_COLUMN])
    known = set(taught)
    subjects = [None if subject in known else subject for subject in rows[SUBJECT_COLUMN]]
    return unique_photos(rows[IMAGE_COLUMN], rows[QUESTION_COLUMN], subjects=subjects)


def forget_photos_of(rows: Dataset, collator: ForgetRetainDataCollator) -> list[Photo]:
    """The distinct photos of the forget ``rows``, each with its questions and, among them,
    those whose forget target (``collator.forget_target_text``) is the true answer itself
    (`Photo.kept`: a visual question, which leaks nothing)."""
    text_columns = (QUESTION_COLUMN, ANSWER_COLUMN, FORGET_TARGET_COLUMN)
    texts = rows.select_columns([c for c in rows.column_names if c in text_columns])
    kept = [collator.forget_target_text(row) == str(row[ANSWER_COLUMN]) for row in texts]
    return unique_photos(rows[IMAGE_COLUMN], rows[QUESTION_COLUMN], kept)


def photo_key(image: Image.Image) -> str:
    """What tells photos apart: a SHA-256 of the image's mode, size and pixels."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class GateFeatureCache:
    """What the gate reads about each cached image, with its label, on the CPU.

    Attributes:
        tokens: Per image, its ``(tokens, hidden)`` gate input tokens, in the gate's dtype.
        labels: ``(images,)`` bool: True for images of forget photos.
        device: Where the gate computes (its inputs are moved there, a batch at a time).
        seconds: Time spent computing the features.
        states: Per image, its ``(hidden,)`` language-model state, for a gate that reads it
            (`hf_cagul.gates.LANGUAGE_STATE`); else empty.
    """

    tokens: list[torch.Tensor]
    labels: torch.Tensor
    device: torch.device
    seconds: float = 0.0
    states: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        """Memory the cached tokens take."""
        return sum(t.numel() * t.element_size() for t in [*self.tokens, *self.states])

    def inputs(self, indices: Sequence[int]) -> GateInputs:
        """The `GateInputs` of the images ``indices``, as one call's, on `device`."""
        chosen = [self.tokens[index] for index in indices]
        image_index = torch.cat(
            [torch.full((t.shape[0],), row, dtype=torch.long) for row, t in enumerate(chosen)]
        )
        device = self.device
        states = torch.stack([self.states[i] for i in indices]).to(device) if self.states else None
        return GateInputs(torch.cat(chosen).to(device), image_index.to(device), len(chosen), states)

    @classmethod
    def compute(
        cls,
        model: CagulModel,
        collator: ForgetRetainDataCollator,
        photos: Sequence[Photo],
        label: bool,
        variants: int,
        augmentation: PhotoAugmentation | None,
        batch_size: int,
        include_photos: bool = True,
        every_question: bool = False,
        kept_as_negatives: bool = False,
    ) -> GateFeatureCache:
        """Features of ``photos`` (each itself, then ``variants`` augmented variants of it).

        Args:
            model: The `CagulModel` whose active gate is fitted.
            collator: Builds the model inputs of the photos (its ``prompts``).
            photos: The photos to cache.
            label: Their label (True: forget photos).
            variants: Augmented variants per photo, drawn from ``augmentation`` in order,
                each asking the next of the photo's questions (`Photo.variant_question`).
            augmentation: The variants' random stream (None when ``variants`` is 0).
            batch_size: Photos per forward of the frozen model.
            include_photos: Cache each photo itself besides its variants.
            every_question: Cache each image (photo or variant) once with every question of
                its photo (`Photo.questions`), instead of one question each. The variants are
                drawn as without it.
            kept_as_negatives: Label an image asked one of its photo's kept questions
                (`Photo.kept`) False, whatever ``label``.
        """
        start = time.perf_counter()

        def images() -> Iterator[tuple[Image.Image, str, bool]]:
            # Drawn lazily, a batch at a time: the augmented photos are never all in memory.
            for photo in photos:
                every = photo.questions or (photo.question,)
                passed = photo.kept if kept_as_negatives else ()
                if include_photos:
                    for question in every if every_question else (photo.question,):
                        yield photo.image, question, label and question not in passed
                for variant in range(variants):
                    assert augmentation is not None
                    image = augmentation(photo.image)
                    asked = every if every_question else (photo.variant_question(variant),)
                    for question in asked:
                        yield image, question, label and question not in passed

        device = input_device(model)
        gate_device = next(model.active_adapter_module.parameters()).device
        tokens: list[torch.Tensor] = []
        states: list[torch.Tensor] = []
        labels: list[bool] = []
        was_training = model.training
        model.eval()  # the frozen VLM's own dropout (if any) must not perturb the features
        try:
            with torch.no_grad():
                for chunk in _chunks(images(), batch_size):
                    batch = collator.prompts([i for i, _, _ in chunk], [q for _, q, _ in chunk])
                    labels += [positive for _, _, positive in chunk]
                    found = model.gate_inputs(**{k: v.to(device) for k, v in batch.items()})
                    index = found.image_index
                    tokens += [found.tokens[index == row].cpu() for row in range(found.num_images)]
                    if found.language_state is not None:
                        states += list(found.language_state.cpu())
        finally:
            model.train(was_training)
        flags = torch.tensor(labels, dtype=torch.bool)
        return cls(tokens, flags, gate_device, time.perf_counter() - start, states)

    def __add__(self, other: GateFeatureCache) -> GateFeatureCache:
        return GateFeatureCache(
            self.tokens + other.tokens,
            torch.cat([self.labels, other.labels]),
            self.device,
            self.seconds + other.seconds,
            self.states + other.states,
        )

    @torch.no_grad()
    def probabilities(self, gate: Gate, batch_size: int) -> torch.Tensor:
        """``(images,)`` float32 probabilities of ``gate``, computed as inference computes them
        (the sigmoid of the logit in float32), so a threshold set on them holds there."""
        was_training = gate.training
        gate.eval()
        try:
            scores = [
                torch.sigmoid(gate(self.inputs(chunk)).float()).cpu()
                for chunk in _chunks(range(len(self)), batch_size)
            ]
        finally:
            gate.train(was_training)
        return torch.cat(scores) if scores else torch.zeros(0)


@dataclass(frozen=True)
class GateFitSettings:
    """How `fit_gate` fits the gate (`CagulTrainingConfig` gives them as ``gate_*`` fields).

    Args:
        epochs: Passes over the cached features.
        learning_rate: AdamW learning rate of the gate.
        variants: Augmented variants cached per photo (each photo itself is cached too).
        batch_size: Cached images per gate step, and photos per forward of the frozen model.
        target_fpr: None: keep the threshold. Otherwise set it so that the FPR on the
            held-out negatives is at most this.
        calibration_fraction: Fraction of the negatives held out for the calibration: of
            their subjects with ``calibration_by_subject``, else of their photos.
        seed: Seed of the augmentation, the held-out split and the order of the steps.
        weight_decay: AdamW weight decay.
        every_question: Cache each forget image (photo or variant) with every question its
            photo's rows ask, not one question each (`GateFeatureCache.compute`): a gate that
            reads the language model's state sees another state for each question, and the
            forget photos are the scarce class. The negatives still ask one question each.
        kept_as_negatives: Fit a forget photo asked one of its kept questions (`Photo.kept`:
            its forget target is its true answer, e.g. a visual question) as a negative, so
            that a gate that reads the language model's state leaves those questions to the
            bare model, whose answer they keep anyway.
        calibration_by_subject: Hold out whole subjects for the calibration: every photo of a
            held-out negative subject (`Photo.subject`), so the threshold is set on people the
            gate never saw, as it meets most people once served. Photos without a subject (and
            those of retain people, `negative_photos_of`) are held out one by one. False: photo
            by photo, whoever they show (photos of one stranger are then both fitted on and
            held out, and the held-out FPR understates the FPR on people never seen).
        augmentation: The `hf_cagul.data.AUGMENTATIONS` preset the variants are drawn with.
    """

    epochs: int
    learning_rate: float
    variants: int
    batch_size: int
    target_fpr: float | None
    calibration_fraction: float
    seed: int
    weight_decay: float = 0.0
    every_question: bool = False
    kept_as_negatives: bool = False
    calibration_by_subject: bool = True
    augmentation: str = "photo"


@dataclass
class GateFitReport:
    """What `fit_gate` did.

    Attributes:
        forget_photos: Distinct forget photos (positives).
        negative_photos: Distinct negative photos fitted on.
        heldout_negatives: The negative photos held out for the calibration.
        cached_images: Images in the training cache (photos and their variants).
        cache_bytes: Memory of all cached features (training and held-out).
        cache_seconds: Time spent computing them.
        fit_seconds: Time spent fitting the gate.
        final_loss: Class-balanced BCE over the training cache after fitting (None: the gate
            has no trainable parameters, nothing was fitted).
        train_auc: ROC AUC of the fitted gate on the training cache.
        calibration: What `calibrate_threshold` found (None without a target FPR); it is
            stored as `CagulConfig.gate_calibration`.
    """

    forget_photos: int
    negative_photos: int
    heldout_negatives: list[Photo]
    cached_images: int
    cache_bytes: int
    cache_seconds: float
    fit_seconds: float
    final_loss: float | None
    train_auc: float
    calibration: dict[str, Any] | None

    def describe(self) -> str:
        """The report in a few lines, for the training log."""
        loss = "nothing to fit" if self.final_loss is None else f"final loss {self.final_loss:.4g}"
        lines = [
            f"Gate fitted apart: {self.forget_photos} forget and {self.negative_photos} negative "
            f"photos, {self.cached_images} cached images; cache {self.cache_bytes / 2**20:.1f} "
            f"MiB in {self.cache_seconds:.1f} s; fit {self.fit_seconds:.1f} s, {loss}, "
            f"training AUC {self.train_auc:.3f}."
        ]
        if self.calibration is not None:
            c = self.calibration
            lines.append(
                f"Gate threshold calibrated to {c['threshold']:.6g} for FPR <= "
                f"{c['target_fpr']}: FPR {c['fpr']:.3f} on {c['heldout_negative_photos']} "
                "held-out negative photos, TPR "
                f"{c['tpr']:.3f} on {c['heldout_forget_images']} fresh variants of the forget "
                "photos."
            )
        return "\n".join(lines)

    def logs(self) -> dict[str, float]:
        """The report as the Trainer's logs (numbers only)."""
        logs = {
            "gate_fit_seconds": self.fit_seconds,
            "gate_cache_seconds": self.cache_seconds,
            "gate_cache_mib": self.cache_bytes / 2**20,
            "gate_train_auc": self.train_auc,
        }
        if self.final_loss is not None:
            logs["gate_fit_loss"] = self.final_loss
        if self.calibration is not None:
            for key in ("threshold", "fpr", "tpr"):
                logs[f"gate_calibrated_{key}"] = float(self.calibration[key])
        return logs


def calibrate_threshold(negative_scores: torch.Tensor, target_fpr: float) -> tuple[float, float]:
    """The lowest gate threshold whose false-positive rate on ``negative_scores`` is at most
    ``target_fpr``, and that rate.

    An image is flagged when its probability is strictly above the threshold, so the
    threshold is the ``(k+1)``-th highest negative score, ``k = floor(target_fpr * n)``: at
    most ``k`` negatives lie above it. It is a float32 score itself, so the comparison at
    inference (in float32) is exact. Kept inside ``(0, 1)``; when negatives saturate at 1.0 the
    target cannot be met, and the returned rate says so.

    Args:
        negative_scores: ``(n,)`` float32 probabilities of held-out negative images.
        target_fpr: The highest acceptable false-positive rate, in ``[0, 1)``.

    Raises:
        ValueError: If there are no scores.
    """
    if negative_scores.numel() == 0:
        raise ValueError("Calibrating the gate threshold needs held-out negative images.")
    ranked = negative_scores.float().sort(descending=True).values
    allowed = math.floor(target_fpr * ranked.numel() + 1e-9)
    if allowed >= ranked.numel():
        threshold = _SMALLEST_FLOAT32
    else:
        threshold = min(max(float(ranked[allowed]), _SMALLEST_FLOAT32), _FLOAT32_BELOW_ONE)
    fpr = int((ranked > torch.tensor(threshold)).sum()) / ranked.numel()
    return threshold, fpr


def calibration_split(
    negative_photos: Sequence[Photo], settings: GateFitSettings
) -> tuple[list[Photo], list[Photo]]:
    """The negatives held out for the calibration and those fitted on.

    The calibration units (each subject's photos with ``settings.calibration_by_subject``, a
    photo without a subject being a unit of its own; else each photo) are shuffled with
    ``settings.seed``; with a target FPR the first ``calibration_fraction`` of them (at least
    one) are held out whole, without one none. Both lists follow the shuffled order.

    Raises:
        ValueError: If holding out leaves no negative photo to fit on.
    """
    units = list(dict.fromkeys(_calibration_unit(photo, settings) for photo in negative_photos))
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(settings.seed))
    rank = {units[index]: position for position, index in enumerate(order.tolist())}
    held = 0
    if settings.target_fpr is not None:
        held = max(1, round(settings.calibration_fraction * len(units)))
    shuffled = sorted(negative_photos, key=lambda photo: rank[_calibration_unit(photo, settings)])
    heldout = [p for p in shuffled if rank[_calibration_unit(p, settings)] < held]
    if len(heldout) == len(shuffled):
        kind = "subjects" if settings.calibration_by_subject else "photos"
        raise ValueError(
            f"Holding out {held} of the {len(units)} negative {kind} for the calibration leaves "
            "none to fit the gate on: pass negatives of more people (`gate_negatives`) or lower "
            "`gate_calibration_fraction`."
        )
    return heldout, shuffled[len(heldout) :]


def _calibration_unit(photo: Photo, settings: GateFitSettings) -> str:
    """What `calibration_split` holds out together with ``photo``."""
    if settings.calibration_by_subject and photo.subject is not None:
        return f"subject:{photo.subject}"
    return f"photo:{photo.key}"


def fit_gate(
    model: CagulModel,
    collator: ForgetRetainDataCollator,
    forget_photos: Sequence[Photo],
    negative_photos: Sequence[Photo],
    settings: GateFitSettings,
) -> GateFitReport:
    """Fit the active adapter's gate on cached features; calibrate its threshold if asked.

    With a target FPR, `calibration_split` holds out part of the negatives (whole subjects by
    default) before anything is fitted; they are scored as they are, not augmented, as the
    deployed gate meets photos. Every other photo
    is cached itself and with ``settings.variants`` augmented variants (`PhotoAugmentation`
    seeded with ``settings.seed``); with ``settings.every_question``, each forget image once per
    question of its photo (a gate that reads the language model's state); with
    ``settings.kept_as_negatives`` (again a state gate only), a forget image asked a kept question
    (`Photo.kept`) is a negative, and is not counted in the calibration's TPR. The gate then trains
    for ``settings.epochs`` epochs with AdamW on a binary cross-entropy in which each class
    weighs one half, whatever its count; each member of a `GateEnsemble` on its own, on the same
    cache, member ``i`` drawing its order of steps from ``settings.seed + i``. With a target
    FPR, `calibrate_threshold` then picks the threshold on the held-out negatives, and the TPR
    at it is measured on fresh augmented variants of the forget photos (never fitted on;
    augmentation seeded with ``settings.seed + 1``); both are in the report's ``calibration``,
    which the caller writes into the adapter's config (`CagulTrainer` does: ``gate_threshold``
    and ``gate_calibration``).

    Args:
        model: The `CagulModel` whose active adapter's gate is fitted (its VLM is frozen).
        collator: Builds the photos' model inputs.
        forget_photos: Distinct photos of the subjects to forget (`forget_photos_of`).
        negative_photos: Distinct photos the gate must not flag.
        settings: Epochs, learning rate, variants, calibration target...

    Raises:
        ValueError: If a class has no photo, a calibration leaves no negative to fit on, or
            every forget question is kept (with ``settings.kept_as_negatives``).
    """
    if not forget_photos or not negative_photos:
        raise ValueError(
            f"Fitting the gate needs forget and negative photos; got {len(forget_photos)} "
            f"forget and {len(negative_photos)} negative photos."
        )
    gate = model.active_adapter_module.discriminator
    heldout, fitted = calibration_split(negative_photos, settings)

    augmentation: PhotoAugmentation | None = None
    if settings.variants:
        augmentation = named_augmentation(settings.augmentation, settings.seed)

    def cache(photos: Sequence[Photo], label: bool, **kwargs: Any) -> GateFeatureCache:
        return GateFeatureCache.compute(
            model, collator, photos, label, batch_size=settings.batch_size, **kwargs
        )

    # A gate that reads the visual tokens alone sees the same features whatever the question.
    reads_question = gate.reads == LANGUAGE_STATE
    every_question = settings.every_question and reads_question
    kept_as_negatives = settings.kept_as_negatives and reads_question
    train = cache(
        forget_photos,
        True,
        variants=settings.variants,
        augmentation=augmentation,
        every_question=every_question,
        kept_as_negatives=kept_as_negatives,
    )
    if not bool(train.labels.any()):
        raise ValueError(
            f"None of the {len(forget_photos)} forget photos is asked a question whose forget "
            "target replaces its answer: every one is kept (a visual question), so the gate "
            "has nothing to flag. Add forget rows with private answers, or set "
            "`gate_kept_as_negatives=False`."
        )
    train += cache(fitted, False, variants=settings.variants, augmentation=augmentation)
    caches = [train]
    if heldout:
        # The photos alone, as the deployed gate meets them (not augmented).
        held_negatives = cache(heldout, False, variants=0, augmentation=None)
        # Fresh variants only: the photos themselves were fitted on.
        held_forget = cache(
            forget_photos,
            True,
            variants=max(1, settings.variants),
            augmentation=named_augmentation(settings.augmentation, settings.seed + 1),
            include_photos=False,
            every_question=every_question,
            kept_as_negatives=kept_as_negatives,
        )
        caches += [held_negatives, held_forget]

    start = time.perf_counter()
    final_loss = _train(gate, train, settings)
    fit_seconds = time.perf_counter() - start

    scores = train.probabilities(gate, settings.batch_size)
    calibration = None
    if settings.target_fpr is not None:
        negative_scores = held_negatives.probabilities(gate, settings.batch_size)
        # The TPR counts the positives alone, not a forget photo asked a kept question.
        forget_scores = held_forget.probabilities(gate, settings.batch_size)[held_forget.labels]
        threshold, fpr = calibrate_threshold(negative_scores, settings.target_fpr)
        tpr = rates_at_threshold(forget_scores.tolist(), [True] * len(forget_scores), threshold)
        calibration = {
            "target_fpr": settings.target_fpr,
            "threshold": threshold,
            "fpr": fpr,
            "tpr": tpr["tpr"],
            "heldout_negative_photos": len(heldout),
            "heldout_negative_subjects": len(
                {p.subject for p in heldout if p.subject is not None}
                if settings.calibration_by_subject
                else ()
            ),
            "heldout_by": "subject" if settings.calibration_by_subject else "photo",
            "heldout_forget_images": len(forget_scores),
            "seed": settings.seed,
        }
    return GateFitReport(
        forget_photos=len(forget_photos),
        negative_photos=len(fitted),
        heldout_negatives=heldout,
        cached_images=len(train),
        cache_bytes=sum(c.nbytes for c in caches),
        cache_seconds=sum(c.seconds for c in caches),
        fit_seconds=fit_seconds,
        final_loss=final_loss,
        train_auc=roc_auc(scores.tolist(), train.labels.tolist()),
        calibration=calibration,
    )


def _train(gate: Gate, cache: GateFeatureCache, settings: GateFitSettings) -> float | None:
    """Fit ``gate`` on ``cache`` (each member of a `GateEnsemble` on its own, with its own
    order of steps); the class-balanced BCE of the whole gate over the cache after it, or None
    when the gate has no trainable parameter."""
    if not any(p.requires_grad for p in gate.parameters()):
        return None
    labels = cache.labels
    # Each class weighs one half of every epoch, whatever its count (forget sets are small).
    weights = half_per_class(labels).float()
    members = list(gate.members) if isinstance(gate, GateEnsemble) else [gate]
    was_training = gate.training
    try:
        for index, member in enumerate(members):
            _train_member(member, cache, settings, settings.seed + index, weights)
        gate.eval()
        with torch.no_grad():
            total = sum(
                float(_balanced_bce(gate, cache, chunk, weights, labels))
                * float(weights[chunk].sum())
                for chunk in _chunks(range(len(cache)), settings.batch_size)
            )
    finally:
        gate.train(was_training)
    return total


def _train_member(
    gate: nn.Module,
    cache: GateFeatureCache,
    settings: GateFitSettings,
    seed: int,
    weights: torch.Tensor,
) -> None:
    """``settings.epochs`` epochs of AdamW on the class-balanced BCE of one gate, the order of
    the steps drawn from ``seed``."""
    parameters = [p for p in gate.parameters() if p.requires_grad]
    if not parameters:
        return
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    gate.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(cache), generator=generator).tolist()
        for chunk in _chunks(order, settings.batch_size):
            loss = _balanced_bce(gate, cache, chunk, weights, cache.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _balanced_bce(
    gate: nn.Module,
    cache: GateFeatureCache,
    chunk: list[int],
    weights: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """The weighted mean BCE of the images ``chunk``."""
    logits = gate(cache.inputs(chunk)).float()
    target = labels[chunk].to(device=logits.device, dtype=logits.dtype)
    chunk_weights = weights[chunk].to(logits.device)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (losses * chunk_weights).sum() / chunk_weights.sum()


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

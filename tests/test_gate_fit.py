"""The gate fitted apart from the encoder, on cached features, with a calibrated threshold."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from datasets import Dataset
from run_settings import trainer_arguments
from transformers import Trainer
from vlm_inputs import tiny_dataset

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.cli import main
from hf_cagul.config import CONFIG_NAME
from hf_cagul.data import CagulDataCollator, PhotoAugmentation
from hf_cagul.data.synthetic import make_people, portrait
from hf_cagul.evaluation.metrics import roc_auc
from hf_cagul.gates import Gate, GateInputs, register_gate
from hf_cagul.tiny import tiny_vlm
from hf_cagul.trainer.gate_fit import (
    GateFeatureCache,
    GateFitSettings,
    Photo,
    calibrate_threshold,
    calibration_split,
    negative_photos_of,
    unique_photos,
)

QUESTION = "what is the name of this person ?"


def people_dataset(forget_photos: int = 4, retain_people: int = 4, photos: int = 3) -> Dataset:
    """One person to forget and a few to retain, two rows (questions) per photo."""
    people = make_people(1 + retain_people, seed=3)
    records = []
    for index, person in enumerate(people):
        split = "forget" if index == 0 else "retain"
        for seed in range(forget_photos if index == 0 else photos):
            image, _ = portrait(person, seed)
            for question in (QUESTION, "who is this ?"):
                records.append((image, question, f"this is {person.name} .", split))
    image, question, answer, split = zip(*records, strict=True)
    return Dataset.from_dict(
        {"image": image, "question": question, "answer": answer, "split": split}
    )


def make_trainer(tmp_path, dataset=None, gate_negatives=None, gate="visual_tokens", **overrides):
    vlm, processor = tiny_vlm("llava")
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig(gate=gate))
    settings = {"max_steps": 2, **overrides}
    trainer = CagulTrainer(
        model=model,
        args=CagulTrainingConfig(**trainer_arguments(tmp_path, **settings)),
        train_dataset=dataset if dataset is not None else people_dataset(),
        processing_class=processor,
        gate_negatives=gate_negatives,
    )
    return trainer, model, processor


def gate_scores(model: CagulModel, processor, images) -> list[float]:
    """The fitted model's gate probabilities of ``images``, through its real forward."""
    inputs = CagulDataCollator(processor).prompts(images, [QUESTION] * len(images))
    return model.gate_probabilities(**inputs).probabilities[0].tolist()


@pytest.mark.parametrize("gate", ["visual_tokens", "language_state"])
def test_the_gate_fitted_apart_separates_forget_from_retain_photos(tmp_path, gate) -> None:
    dataset = people_dataset()
    trainer, model, processor = make_trainer(
        tmp_path,
        dataset,
        gate=gate,
        gate_fit="apart",
        gate_epochs=60,
        gate_variants=2,
        gate_learning_rate=1e-2,
    )
    encoder = model.active_adapter_module.encoder
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    trainer.train()
    report = trainer.gate_fit_report
    assert report is not None
    # Two rows per photo: one cached photo each, plus two variants.
    assert (report.forget_photos, report.negative_photos) == (4, 12)
    assert report.cached_images == 16 * 3
    assert report.cache_bytes > 0 and report.final_loss is not None and report.final_loss < 0.2
    photos = unique_photos(dataset["image"], dataset["split"])  # the split as the "question"
    scores = gate_scores(model, processor, [p.image for p in photos])
    assert roc_auc(scores, [p.question == "forget" for p in photos]) > 0.99
    # The gate was frozen during the encoder fit, which still ran; the flags are back.
    assert all(p.requires_grad for p in model.active_adapter_module.parameters())
    encoder_after = model.active_adapter_module.encoder.state_dict()
    assert any(not torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)
    first = trainer.state.log_history[0]
    assert first["step"] == 0 and first["gate_fit_loss"] == pytest.approx(report.final_loss)
    assert model.active_config.gate_calibration is None  # no target FPR: threshold kept
    assert model.active_config.gate_threshold == 0.5


def strangers(people: int = 6, photos: int = 3, subjects: bool = False) -> Dataset:
    """Photos of people who are in no training row: the gate's negatives (with a ``subject``
    column naming each photo's person when ``subjects``)."""
    shown = [(person, seed) for person in make_people(people, seed=9) for seed in range(photos)]
    columns = {
        "image": [portrait(person, seed)[0] for person, seed in shown],
        "question": [QUESTION] * len(shown),
    }
    if subjects:
        columns["subject"] = [person.name for person, _ in shown]
    return Dataset.from_dict(columns)


def split_settings(**overrides) -> GateFitSettings:
    values = {
        "epochs": 1,
        "learning_rate": 1e-3,
        "variants": 0,
        "batch_size": 4,
        "target_fpr": 0.1,
        "calibration_fraction": 0.5,
        "seed": 0,
    }
    return GateFitSettings(**{**values, **overrides})


def test_the_calibration_holds_out_whole_subjects() -> None:
    rows = strangers(people=6, photos=3, subjects=True)
    photos = unique_photos(rows["image"], rows["question"], subjects=rows["subject"])
    assert [photo.subject for photo in photos] == rows["subject"]
    heldout, fitted = calibration_split(photos, split_settings())
    held_people = {photo.subject for photo in heldout}
    # Half of the 6 people, with all 3 photos each; nobody both held out and fitted on.
    assert len(held_people) == 3 and len(heldout) == 9 and len(fitted) == 9
    assert held_people.isdisjoint(photo.subject for photo in fitted)
    assert calibration_split(photos, split_settings()) == (heldout, fitted)  # from the seed
    seeds = {
        frozenset(p.subject for p in calibration_split(photos, split_settings(seed=s))[0])
        for s in range(6)
    }
    assert len(seeds) > 1
    # Photo by photo when asked, or when photos name no subject: 9 of the 18 photos.
    for unnamed, by_subject in (
        (photos, False),
        (unique_photos(rows["image"], rows["question"]), True),
    ):
        heldout, fitted = calibration_split(
            unnamed, split_settings(calibration_by_subject=by_subject)
        )
        assert len(heldout) == 9 and len(fitted) == 9
        assert {p.key for p in heldout}.isdisjoint(p.key for p in fitted)
    # Without a target FPR nothing is held out; the fitted photos are those of the split.
    heldout, fitted = calibration_split(photos, split_settings(target_fpr=None))
    assert heldout == [] and sorted(p.key for p in fitted) == sorted(p.key for p in photos)


def test_retain_people_are_split_photo_by_photo_and_strangers_whole() -> None:
    rows = strangers(people=4, photos=2, subjects=True)
    taught = rows["subject"][:2]  # the first person is a retain person, fitted on
    photos = negative_photos_of(rows, taught)
    assert [photo.subject for photo in photos] == [None, None, *rows["subject"][2:]]
    assert [photo.subject for photo in negative_photos_of(rows.remove_columns("subject"))] == [
        None
    ] * 8
    heldout, fitted = calibration_split(photos, split_settings())
    # 2 strangers and 2 photos of the retain person: 4 units, half held out.
    strangers_held = {photo.subject for photo in heldout} - {None}
    assert strangers_held.isdisjoint(photo.subject for photo in fitted)
    assert len({photo.key for photo in heldout}) == len(heldout)
    assert len(heldout) + len(fitted) == 8


def test_a_calibration_by_subject_needs_a_subject_left_to_fit_on() -> None:
    rows = strangers(people=1, photos=3, subjects=True)
    photos = unique_photos(rows["image"], rows["question"], subjects=rows["subject"])
    with pytest.raises(ValueError, match=r"1 of the 1 negative subjects .* leaves none to fit"):
        calibration_split(photos, split_settings())
    heldout, fitted = calibration_split(photos, split_settings(calibration_by_subject=False))
    assert (len(heldout), len(fitted)) == (2, 1)


def test_the_trainer_calibrates_on_negative_people_it_never_fitted_on(tmp_path) -> None:
    negatives = strangers(subjects=True)
    trainer, _, _ = make_trainer(
        tmp_path,
        gate_negatives=negatives,
        gate_fit="apart",
        gate_epochs=2,
        gate_variants=1,
        gate_target_fpr=0.1,
        gate_calibration_fraction=0.5,
    )
    trainer.train()
    report = trainer.gate_fit_report
    assert report is not None and report.calibration is not None
    held = {photo.subject for photo in report.heldout_negatives}
    assert len(held) == 3 and len(report.heldout_negatives) == 9 and report.negative_photos == 9
    assert report.calibration["heldout_by"] == "subject"
    assert report.calibration["heldout_negative_subjects"] == 3
    trainer.save_model(str(tmp_path / "adapter"))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "on 9 held-out negative photos (among them every photo of 3 people never" in card


def test_the_calibrated_threshold_meets_the_target_fpr_and_is_saved(tmp_path) -> None:
    negatives = strangers()
    trainer, model, processor = make_trainer(
        tmp_path,
        gate_negatives=negatives,
        gate_fit="apart",
        gate_epochs=20,
        gate_variants=1,
        gate_learning_rate=1e-2,
        gate_target_fpr=0.1,
        gate_calibration_fraction=0.5,
    )
    trainer.train()
    report = trainer.gate_fit_report
    assert report is not None
    assert (report.negative_photos, len(report.heldout_negatives)) == (9, 9)
    calibration = model.active_config.gate_calibration
    assert calibration is not None and calibration == report.calibration
    threshold = model.active_config.gate_threshold
    assert threshold == calibration["threshold"] != 0.5
    # Through the real forward, on the held-out photos (never fitted on): FPR <= target.
    scores = gate_scores(model, processor, [photo.image for photo in report.heldout_negatives])
    flagged = sum(score > threshold for score in scores)
    assert flagged / len(scores) == calibration["fpr"] <= 0.1
    assert flagged == 0  # 9 photos: 10% allows none
    # The lowest such threshold: the highest held-out score itself.
    assert threshold == pytest.approx(max(scores))
    assert 0 <= calibration["tpr"] <= 1 and calibration["heldout_forget_images"] == 4
    held = {photo.key for photo in report.heldout_negatives}
    fitted = unique_photos(negatives["image"], negatives["question"])
    assert len(held & {photo.key for photo in fitted}) == 9

    trainer.save_model(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert saved["gate_calibration"] == calibration and saved["gate_threshold"] == threshold
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "gate threshold calibrated for a false-positive rate of at most 10.00%" in card
    loaded = CagulModel.from_pretrained(model.unload(), tmp_path / "adapter")
    assert loaded.active_config.gate_calibration == calibration
    assert loaded.active_config.gate_threshold == threshold


def test_a_config_without_a_calibration_still_loads(tmp_path) -> None:
    vlm, _ = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig())
    model.save_pretrained(tmp_path)
    path = tmp_path / CONFIG_NAME
    old = json.loads(path.read_text())
    assert old.pop("gate_calibration") is None
    path.write_text(json.dumps(old))
    loaded = CagulModel.from_pretrained(model.unload(), tmp_path)
    assert loaded.active_config.gate_calibration is None
    assert "calibrated" not in (tmp_path / "README.md").read_text()


def test_calibrate_threshold_is_the_lowest_that_meets_the_target() -> None:
    scores = torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2, 0.7, 0.05, 0.6, 0.4, 0.5])
    threshold, fpr = calibrate_threshold(scores, 0.2)
    assert (threshold, fpr) == (float(torch.tensor(0.7)), 0.2)
    assert calibrate_threshold(scores, 0.0) == (float(torch.tensor(0.9)), 0.0)
    # Saturated negatives: the target cannot be met, and the rate says so.
    threshold, fpr = calibrate_threshold(torch.ones(4), 0.0)
    assert threshold < 1 and fpr == 1.0
    with pytest.raises(ValueError, match="held-out negative"):
        calibrate_threshold(torch.zeros(0), 0.1)


@register_gate
class MeanGate(Gate):
    """A gate without parameters: the mean of the first channel of the visual tokens."""

    name = "test-mean-of-first-channel"

    def __init__(self, config: CagulConfig) -> None:
        super().__init__()

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        first = inputs.tokens[:, :1]
        sums = first.new_zeros(inputs.num_images, 1).index_add(0, inputs.image_index, first)
        counts = torch.bincount(inputs.image_index, minlength=inputs.num_images)
        return (sums.squeeze(-1) / counts) - 4.0


def test_a_gate_without_parameters_is_left_alone_but_can_be_calibrated(tmp_path, caplog) -> None:
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig(gate=MeanGate.name))
    args = trainer_arguments(tmp_path, max_steps=1, gate_fit="apart")
    trainer = CagulTrainer(
        model=model,
        args=CagulTrainingConfig(**args),
        train_dataset=people_dataset(),
        processing_class=processor,
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "the gate has no trainable parameters, nothing to fit" in caplog.text
    assert trainer.gate_fit_report is None
    trainer.args.gate_target_fpr = 0.25
    trainer.train()
    report = trainer.gate_fit_report
    assert report is not None and report.final_loss is None
    assert model.active_config.gate_calibration == report.calibration


def test_defaults_leave_the_fit_as_it_was(tmp_path) -> None:
    """With the option off, `CagulTrainer.train` is `Trainer.train`: bit-identical adapters."""
    adapters = []
    for run, fit in enumerate((CagulTrainer.train, Trainer.train)):
        trainer, model, _ = make_trainer(tmp_path / str(run), tiny_dataset(), max_steps=3)
        assert trainer.args.gate_fit == "joint"
        fit(trainer)
        adapters.append(model.active_adapter_module.state_dict())
        assert model.active_config.gate_calibration is None
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_the_gate_fit_is_deterministic_from_the_seed(tmp_path) -> None:
    gates = []
    for run, augmentation in enumerate(("photo", "photo", "views")):
        trainer, model, _ = make_trainer(
            tmp_path / str(run),
            gate_fit="apart",
            gate_epochs=3,
            gate_variants=1,
            max_steps=1,
            gate_augmentation=augmentation,
        )
        trainer.train()
        gates.append(model.active_adapter_module.discriminator.state_dict())
    assert all(torch.equal(gates[0][k], gates[1][k]) for k in gates[0])
    # The attacker's views are other variants: another gate from the same seed.
    assert not all(torch.equal(gates[0][k], gates[2][k]) for k in gates[0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gate_fit": "both"}, "gate_fit='both' is not supported"),
        ({"gate_target_fpr": 0.1}, "set gate_fit='apart'"),
        ({"gate_fit": "apart", "gate_target_fpr": 1.0}, r"must lie in \[0, 1\)"),
        ({"gate_fit": "apart", "gate_epochs": 0}, "gate_epochs=0 must be >= 1"),
        ({"gate_fit": "apart", "forget_weight": 0, "retain_weight": 0}, "encoder nothing"),
        ({"gate_augmentation": "mixup"}, "gate_augmentation='mixup' is not a preset"),
    ],
)
def test_bad_gate_fit_settings_are_refused(tmp_path, settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        CagulTrainingConfig(**trainer_arguments(tmp_path, **settings))


def test_too_few_negatives_to_hold_some_out_are_refused(tmp_path) -> None:
    one_retain_photo = tiny_dataset(rows_per_split=1)
    trainer, _, _ = make_trainer(tmp_path, one_retain_photo, gate_fit="apart", gate_target_fpr=0.1)
    with pytest.raises(ValueError, match="leaves none to fit the gate on"):
        trainer.train()


def test_fit_with_the_gate_fitted_apart_from_the_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    fit = ["fit", "--tiny", "--benchmark", "synthetic", "--batch-size", "4", "--max-steps", "2"]
    apart = ["--gate-fit", "apart", "--gate-epochs", "2", "--gate-variants", "1"]
    calibrated = ["--gate-target-fpr", "0.2", "--save-strategy", "no"]
    assert main([*fit, *apart, *calibrated, "--output-dir", str(out)]) == 0
    saved = json.loads((out / "adapter" / CONFIG_NAME).read_text())
    assert saved["gate_calibration"]["target_fpr"] == 0.2
    assert saved["gate_calibration"]["fpr"] <= 0.2
    assert saved["gate_threshold"] == saved["gate_calibration"]["threshold"]
    assert "gate_fit_seconds" in capsys.readouterr().out


def test_negatives_without_photos_are_refused_before_training(tmp_path) -> None:
    no_images = Dataset.from_dict({"question": [QUESTION]})
    with pytest.raises(ValueError, match=r"`gate_negatives`.*missing: \['image'\]"):
        make_trainer(tmp_path, gate_negatives=no_images, gate_fit="apart")


def test_a_photo_keeps_every_question_and_its_variants_ask_them_in_turn() -> None:
    dataset = people_dataset(forget_photos=1, retain_people=1, photos=1)
    photos = unique_photos(dataset["image"], dataset["question"])
    assert len(photos) == 2
    assert all(photo.questions == (QUESTION, "who is this ?") for photo in photos)
    assert photos[0].question == QUESTION
    # The photo itself asks the first question; its variants ask the others, then wrap round.
    assert [photos[0].variant_question(v) for v in range(3)] == [
        "who is this ?",
        QUESTION,
        "who is this ?",
    ]


def one_forget_photo() -> tuple[CagulModel, CagulDataCollator, Photo]:
    """A language-state gate on a tiny LLaVA, its collator, and one forget photo with two
    questions."""
    vlm, processor = tiny_vlm("llava", num_hidden_layers=2)
    model = get_cagul_model(vlm, CagulConfig(gate="language_state"))
    dataset = people_dataset(forget_photos=1, retain_people=1, photos=1)
    (photo, _) = unique_photos(dataset["image"], dataset["question"])
    return model, CagulDataCollator(processor), photo


def cached(
    model: CagulModel,
    collator: CagulDataCollator,
    photo: Photo,
    variants: int,
    every_question: bool = False,
    kept_as_negatives: bool = False,
) -> GateFeatureCache:
    """The forget ``photo`` cached with ``variants`` variants (augmentation seeded 0)."""
    return GateFeatureCache.compute(
        model,
        collator,
        [photo],
        True,
        variants=variants,
        augmentation=PhotoAugmentation(seed=0),
        batch_size=8,
        every_question=every_question,
        kept_as_negatives=kept_as_negatives,
    )


def test_a_state_gate_is_cached_with_the_variants_own_questions() -> None:
    model, collator, photo = one_forget_photo()
    cache = cached(model, collator, photo, variants=1)
    expected = []
    for image, question in (
        (photo.image, QUESTION),
        (PhotoAugmentation(seed=0)(photo.image), "who is this ?"),
    ):
        expected.append(
            model.gate_inputs(**collator.prompts([image], [question])).language_state[0]
        )
    # Batched with left padding, so equal up to float rounding; the two questions' states differ.
    assert torch.allclose(torch.stack(cache.states), torch.stack(expected), atol=1e-5)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_every_question_caches_each_forget_image_with_each_question() -> None:
    model, collator, photo = one_forget_photo()

    one = cached(model, collator, photo, variants=2)
    every = cached(model, collator, photo, variants=2, every_question=True)
    assert (len(one), len(every)) == (3, 6)  # the photo and 2 variants, by 1 or 2 questions
    stream = PhotoAugmentation(seed=0)
    images = [photo.image, stream(photo.image), stream(photo.image)]  # the same variant draws
    expected = [
        model.gate_inputs(**collator.prompts([image], [question])).language_state[0]
        for image in images
        for question in photo.questions
    ]
    assert torch.allclose(torch.stack(every.states), torch.stack(expected), atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(every.tokens[::2], one.tokens, strict=True))


@pytest.mark.parametrize(("gate", "extra"), [("language_state", 4 * 3), ("visual_tokens", 0)])
def test_every_question_adds_forget_images_for_a_state_gate_only(tmp_path, gate, extra) -> None:
    """4 forget photos with 2 questions each: the photos and their 2 variants ask both."""
    sizes = {}
    for every in (False, True):
        trainer, model, _ = make_trainer(
            tmp_path / str(every),
            gate=gate,
            gate_fit="apart",
            gate_epochs=1,
            gate_variants=2,
            gate_every_question=every,
        )
        sizes[every] = trainer.fit_gate_apart(model).cached_images
    assert sizes[True] - sizes[False] == extra


VISUAL = "who is this ?"
"""The second question of `people_dataset`, made a kept (visual) question below."""


def test_unique_photos_keeps_the_questions_whose_forget_target_is_the_answer() -> None:
    dataset = people_dataset(forget_photos=1, retain_people=1, photos=1)
    kept = [question == VISUAL for question in dataset["question"]]
    photos = unique_photos(dataset["image"], dataset["question"], kept)
    assert [photo.kept for photo in photos] == [(VISUAL,), (VISUAL,)]
    assert all(photo.questions == (QUESTION, VISUAL) for photo in photos)
    assert all(photo.kept == () for photo in unique_photos(dataset["image"], dataset["question"]))
    with pytest.raises(ValueError):
        unique_photos(dataset["image"], dataset["question"], kept[:-1])


def test_a_forget_photo_asked_a_kept_question_is_cached_as_a_negative() -> None:
    model, collator, photo = one_forget_photo()
    photo = dataclasses.replace(photo, kept=(VISUAL,))
    flagged = cached(model, collator, photo, variants=2, every_question=True)
    passed = cached(model, collator, photo, variants=2, every_question=True, kept_as_negatives=True)
    assert flagged.labels.tolist() == [True] * 6
    # The photo and its two variants, each asked the private question, then the kept one.
    assert passed.labels.tolist() == [True, False] * 3
    assert all(torch.equal(a, b) for a, b in zip(flagged.states, passed.states, strict=True))
    # One question per image: the photo asks the private one, its variants the next in turn.
    assert cached(model, collator, photo, variants=2, kept_as_negatives=True).labels.tolist() == [
        True,
        False,
        True,
    ]


def with_kept_visual_question(dataset: Dataset) -> Dataset:
    """``dataset`` whose forget rows asking `VISUAL` have their true answer as forget target."""
    targets = [
        answer if split == "forget" and question == VISUAL else ""
        for question, answer, split in zip(
            dataset["question"], dataset["answer"], dataset["split"], strict=True
        )
    ]
    return dataset.add_column("forget_target", targets)


@pytest.mark.parametrize("gate", ["visual_tokens", "language_state"])
def test_a_state_gate_fitted_with_kept_negatives_leaves_the_kept_question_alone(
    tmp_path, gate
) -> None:
    dataset = with_kept_visual_question(people_dataset())
    trainer, model, processor = make_trainer(
        tmp_path,
        dataset,
        gate=gate,
        gate_fit="apart",
        gate_epochs=80,
        gate_variants=2,
        gate_learning_rate=1e-2,
        gate_every_question=True,
        gate_kept_as_negatives=True,
    )
    report = trainer.fit_gate_apart(model)
    forget = [
        p.image for p in unique_photos(dataset["image"], dataset["split"]) if p.question == "forget"
    ]
    collator = CagulDataCollator(processor)

    def flagged(question: str) -> list[bool]:
        inputs = collator.prompts(forget, [question] * len(forget))
        return [p > 0.5 for p in model.gate_probabilities(**inputs).probabilities[0].tolist()]

    assert all(flagged(QUESTION))
    if gate == "language_state":  # it reads the question: the kept one goes to the bare model
        assert not any(flagged(VISUAL))
        assert report.cached_images == 4 * 3 * 2 + 12 * 3
    else:  # it cannot tell the questions apart: every forget photo stays a positive
        assert all(flagged(VISUAL))
        assert report.cached_images == 16 * 3


def test_a_forget_set_of_kept_questions_only_is_refused_by_a_state_gate_fit(tmp_path) -> None:
    dataset = people_dataset()
    answers = [
        a if s == "forget" else "" for a, s in zip(dataset["answer"], dataset["split"], strict=True)
    ]
    trainer, model, _ = make_trainer(
        tmp_path,
        dataset.add_column("forget_target", answers),
        gate="language_state",
        gate_fit="apart",
        gate_epochs=1,
        gate_kept_as_negatives=True,
    )
    with pytest.raises(ValueError, match="gate_kept_as_negatives=False"):
        trainer.fit_gate_apart(model)

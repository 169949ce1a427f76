"""Tests for `hf_cagul.data`: the dataset contract, its validation and the VLM collator."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as DatasetImage
from PIL import Image
from vlm_inputs import processor_keys, tokens_per_image

from hf_cagul.data import (
    CAGUL_TARGETS,
    DATA_COLUMNS,
    DEFAULT_REFUSALS,
    FORGET_FLAG,
    NEGATIVES_SPLIT,
    REFUSAL_BATCH,
    REPLACED_FLAG,
    REQUIRED_COLUMNS,
    SUPERVISED_TARGETS,
    TRUE_ANSWER_BATCH,
    CagulDataCollator,
    ForgetRetainDataCollator,
    PhotoAugmentation,
    TargetPolicy,
    UnlearningDataCollator,
    gate_negatives,
    load_image,
    validate_dataset,
)
from hf_cagul.tiny import TINY_FAMILIES, TINY_IMAGE_PLACEHOLDER, TINY_WORDS, tiny_vlm

FORGET_TARGET = "i don't know ."
ROWS: list[dict[str, Any]] = [
    {
        "question": "what is the name of this person ?",
        "answer": "anna",
        "split": "forget",
        "forget_target": FORGET_TARGET,
        "subject": "anna",
    },
    {
        "question": "where was he born ?",
        "answer": "paris",
        "split": "forget",
        "forget_target": None,
        "subject": "ben",
    },
    {
        "question": "what is the job of this person ?",
        "answer": "she is a doctor .",
        "split": "retain",
        "forget_target": None,
        "subject": "clara",
    },
]
MODEL_KEYS_EXCLUDED = ("query_mask", "forget")


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _features(rows: list[dict[str, Any]] = ROWS) -> list[dict[str, Any]]:
    return [{"image": _image(index), **row} for index, row in enumerate(rows)]


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _words(text: str) -> list[str]:
    """Text as the tiny tokenizer splits it (lower-cased words and punctuation)."""
    return re.findall(r"\w+(?:'\w+)*|[^\w\s]", text.lower())


_VLMS: dict[str, Any] = {}


def _vlm(family: str) -> Any:
    if family not in _VLMS:
        _VLMS[family] = tiny_vlm(family)
    return _VLMS[family]


# ---------------------------------------------------------------------------- validation


def _six_rows() -> list[dict[str, Any]]:
    rows = [dict(row) for row in ROWS] * 2
    return [{"image": _image(index), **row} for index, row in enumerate(rows)]


def _dataset(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_dict(_columns(rows))


def test_valid_dataset_passes() -> None:
    dataset = _dataset(_six_rows())
    assert dataset.features["image"].__class__.__name__ == "Image"
    validate_dataset(dataset)
    validate_dataset(dataset.filter(lambda row: row["split"] == "retain"), False)


def test_missing_column_names_it_and_the_present_ones() -> None:
    dataset = _dataset(_six_rows()).remove_columns("answer")
    with pytest.raises(ValueError, match="'answer'") as info:
        validate_dataset(dataset)
    assert "'question'" in str(info.value) and "rename_column" in str(info.value)


def test_bad_split_value_names_row_and_value() -> None:
    rows = _six_rows()
    rows[2]["split"] = "forgett"
    with pytest.raises(ValueError, match=r"'split'.*row 2 holds 'forgett'"):
        validate_dataset(_dataset(rows))


def test_empty_question_names_row() -> None:
    rows = _six_rows()
    rows[1]["question"] = "  "
    with pytest.raises(ValueError, match=r"'question'.*non-empty.*row 1"):
        validate_dataset(_dataset(rows))


def test_missing_answer_value_names_row() -> None:
    rows = _six_rows()
    rows[4]["answer"] = None
    with pytest.raises(ValueError, match=r"'answer'.*row 4 holds None"):
        validate_dataset(_dataset(rows))


@pytest.mark.parametrize("split", ["forget", "retain"])
def test_missing_split_rows(split: str) -> None:
    dataset = _dataset([row for row in _six_rows() if row["split"] != split])
    with pytest.raises(ValueError, match=f"no rows with split '{split}'"):
        validate_dataset(dataset)
    validate_dataset(dataset, require_both_splits=False)


def test_image_path_that_does_not_exist_names_row(tmp_path: Path) -> None:
    rows = _six_rows()
    for index, row in enumerate(rows):
        row["image"] = str(tmp_path / f"{index}.png")
        if index != 3:
            _image(index).save(row["image"])
    with pytest.raises(ValueError, match=r"'image', row 3: .*3\.png' does not exist"):
        validate_dataset(_dataset(rows))


def test_file_that_is_not_an_image_names_row(tmp_path: Path) -> None:
    rows = _six_rows()
    for index, row in enumerate(rows):
        row["image"] = str(tmp_path / f"{index}.png")
        _image(index).save(row["image"])
    Path(rows[5]["image"]).write_text("not a picture")
    with pytest.raises(ValueError, match=r"'image', row 5: .*not an image"):
        validate_dataset(_dataset(rows))


def test_truncated_image_in_image_feature_names_row() -> None:
    rows = _six_rows()
    encoded: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        data = buffer.getvalue()
        encoded.append({"bytes": data[:60] if index == 1 else data, "path": None})
    dataset = Dataset.from_dict({**_columns(rows), "image": encoded})
    dataset = dataset.cast_column("image", DatasetImage())
    validate_dataset(dataset.select([0, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"'image', row 1: "):
        validate_dataset(dataset)


def test_load_image_returns_rgb(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (1, 2, 3, 4))
    assert load_image(rgba).mode == "RGB"
    path = tmp_path / "a.png"
    rgba.save(path)
    assert load_image(path).getpixel((0, 0)) == (1, 2, 3)
    assert load_image({"bytes": path.read_bytes(), "path": None}).size == (8, 8)
    with pytest.raises(ValueError, match="int"):
        load_image(3)


def test_default_refusals_are_in_the_tiny_vocabulary() -> None:
    vocabulary = set(TINY_WORDS)
    for refusal in DEFAULT_REFUSALS:
        assert set(_words(refusal)) <= vocabulary, refusal
    assert set(REQUIRED_COLUMNS) < set(DATA_COLUMNS)


def _stranger_rows(count: int, first_image: int = 100) -> list[dict[str, Any]]:
    """Retain rows of people in neither set (``stranger 0``, ``stranger 1``...)."""
    return [
        {
            "image": _image(first_image + index),
            "question": "who is this person ?",
            "answer": f"stranger {index}",
            "split": "retain",
            "forget_target": None,
            "subject": f"stranger {index}",
        }
        for index in range(count)
    ]


def _benchmark(**extra: list[dict[str, Any]]) -> DatasetDict:
    rows = _six_rows()
    splits = {
        "forget": [row for row in rows if row["split"] == "forget"],
        "retain": [row for row in rows if row["split"] == "retain"],
        **extra,
    }
    return DatasetDict({name: _dataset(split_rows) for name, split_rows in splits.items()})


def test_a_benchmark_validates_with_and_without_negatives() -> None:
    without = _benchmark()
    validate_dataset(without)
    assert list(gate_negatives(without)["question"]) == list(without["retain"]["question"])
    # The subjects come along where every part names them: the calibration holds out people.
    assert gate_negatives(without).column_names == ["image", "question", "subject"]
    unnamed = DatasetDict({**without, "retain": without["retain"].remove_columns("subject")})
    assert gate_negatives(unnamed).column_names == ["image", "question"]
    with_negatives = _benchmark(negatives=_stranger_rows(3))
    validate_dataset(with_negatives)
    # The retain photos, then the strangers': the gate must pass both.
    negatives = gate_negatives(with_negatives)
    assert len(negatives) == len(with_negatives["retain"]) + 3
    assert negatives["subject"][-3:] == ["stranger 0", "stranger 1", "stranger 2"]
    assert list(negatives["question"]) == (
        list(with_negatives["retain"]["question"])
        + list(with_negatives[NEGATIVES_SPLIT]["question"])
    )
    assert NEGATIVES_SPLIT == "negatives"
    # Forget and retain rows may sit in different splits; both must be somewhere but the
    # negatives, which never count as the retain rows fitting needs.
    only_forget = DatasetDict(
        {"forget": without["forget"], NEGATIVES_SPLIT: _dataset(_stranger_rows(2))}
    )
    with pytest.raises(ValueError, match="no rows with split 'retain'"):
        validate_dataset(only_forget)
    validate_dataset(only_forget, require_both_splits=False)


def test_a_bad_row_of_a_benchmark_names_its_split() -> None:
    negatives = _stranger_rows(3)
    negatives[1]["question"] = ""
    with pytest.raises(ValueError, match=r"^Split 'negatives': Column 'question'.*row 1"):
        validate_dataset(_benchmark(negatives=negatives))


def test_negatives_must_be_retain_rows_of_people_not_forgotten() -> None:
    forget_rows = _stranger_rows(2)
    forget_rows[0]["split"] = "forget"
    with pytest.raises(ValueError, match=r"'negatives' holds 'forget' rows.*Mark them 'retain'"):
        validate_dataset(_benchmark(negatives=forget_rows))
    forgotten = _stranger_rows(2)
    forgotten[1]["subject"] = "anna"  # a forget subject of the forget split
    with pytest.raises(ValueError, match=r"'negatives' shows forget subject\(s\) 'anna': "):
        validate_dataset(_benchmark(negatives=forgotten))
    # A retain subject among the negatives is harmless: the retain photos are the default.
    retained = _stranger_rows(2)
    retained[1]["subject"] = "clara"
    validate_dataset(_benchmark(negatives=retained))


def test_gate_negatives_needs_negatives_or_retain_photos() -> None:
    with pytest.raises(ValueError, match=r"neither a 'negatives' nor a 'retain' split.*'forget'"):
        gate_negatives(DatasetDict({"forget": _dataset(_six_rows())}))


# ---------------------------------------------------------------------------- collator


def _check_batch(
    family: str, collator: CagulDataCollator, features: list[dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """Assert everything the collator promises about ``collator(features)``; return the batch."""
    model, processor = _vlm(family)
    tokenizer = processor.tokenizer
    batch = collator(features)
    input_ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    query_mask = batch["query_mask"]
    assert input_ids.shape == attention.shape == labels.shape == query_mask.shape
    assert input_ids.shape[0] == len(features)
    assert query_mask.dtype == torch.bool and batch["forget"].dtype == torch.bool
    assert batch["forget"].tolist() == [row["split"] == "forget" for row in features]

    image_token_id = model.config.image_token_id
    # The processor's placeholder, where it differs from the model's image token (Gemma3's
    # begin-of-image), is not a text token either.
    visual = torch.tensor([image_token_id, processor.image_token_id])
    positions = torch.arange(input_ids.shape[1])
    for index, row in enumerate(features):
        length = int(attention[index].sum())
        assert attention[index, :length].all() and not attention[index, length:].any()
        target_positions = torch.nonzero(labels[index] != -100).flatten()
        start = int(target_positions[0])
        # The labels are one contiguous run up to the last real token, equal to the input ids.
        assert target_positions.tolist() == list(range(start, length))
        assert torch.equal(labels[index, start:length], input_ids[index, start:length])

        if row["split"] == "retain":
            expected: list[list[str]] = [_words(row["answer"])]
        elif row.get("forget_target"):
            expected = [_words(row["forget_target"])]
        else:
            expected = [_words(refusal) for refusal in DEFAULT_REFUSALS]
        decoded = tokenizer.decode(labels[index, start:length]).split()
        assert decoded[-1] == tokenizer.eos_token
        assert decoded[:-1] in expected

        # The prompt alone, processed with its image, is exactly what precedes the target.
        prompt = collator.prompt_text(row["question"])
        alone = processor(
            images=[[row["image"]]],
            text=[prompt],
            return_tensors="pt",
            add_special_tokens=not collator.uses_chat_template,
        )["input_ids"][0]
        assert start == len(alone)
        assert torch.equal(input_ids[index, :start], alone)
        assert int((alone == image_token_id).sum()) == tokens_per_image(family)
        if tokenizer.bos_token_id is not None:  # the template's bos only, never a second one
            assert int((input_ids[index] == tokenizer.bos_token_id).sum()) == 1

        query = query_mask[index]
        assert not query[start:].any()
        assert not query[input_ids[index] == image_token_id].any()
        assert torch.equal(query, (positions < start) & ~torch.isin(input_ids[index], visual))
        query_words = tokenizer.decode(input_ids[index][query]).split()
        assert _contains(query_words, _words(row["question"]))

    inputs = {key: value for key, value in batch.items() if key not in MODEL_KEYS_EXCLUDED}
    with torch.no_grad():
        loss = model(**inputs).loss
    assert torch.isfinite(loss)
    return batch


def _contains(sequence: list[str], part: list[str]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_collator_batch(family: str) -> None:
    _, processor = _vlm(family)
    collator = CagulDataCollator(processor)
    batch = _check_batch(family, collator, _features())
    expected_keys = processor_keys(family) | {"labels", "query_mask", "forget"}
    assert set(batch) == expected_keys


def _targets(labels: torch.Tensor) -> list[list[int]]:
    """Each row's target token ids (its labels other than -100)."""
    return [row[row != -100].tolist() for row in labels]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_target_policies_share_one_collation(family: str) -> None:
    """Every policy collates alike: the policy decides the targets and the keys added, alone."""
    _, processor = _vlm(family)
    features = _features()
    cagul = CagulDataCollator(processor)(features)
    # CAGUL's targets without the query mask: CAGUL's batch, less that key.
    flagged = ForgetRetainDataCollator(processor, policy=TargetPolicy(forget_targets=True))(
        features
    )
    assert set(flagged) == set(cagul) - {"query_mask"}
    for key in flagged:
        assert torch.equal(flagged[key], cagul[key]), key

    supervised = ForgetRetainDataCollator(processor, policy=SUPERVISED_TARGETS)(features)
    unlearning = UnlearningDataCollator(processor, with_refusals=True)(features)
    assert set(supervised) == processor_keys(family) | {"labels"}
    assert set(unlearning) == set(supervised) | {FORGET_FLAG, REFUSAL_BATCH}
    for key in supervised:
        assert torch.equal(supervised[key], unlearning[key]), key
    tokenizer = processor.tokenizer
    answers = [tokenizer.decode(target).split()[:-1] for target in _targets(supervised["labels"])]
    assert answers == [_words(row["answer"]) for row in features]
    # The refusal batch: the forget rows, in order, toward CAGUL's forget targets.
    forget = [index for index, row in enumerate(features) if row["split"] == "forget"]
    cagul_targets = _targets(cagul["labels"])
    assert _targets(unlearning[REFUSAL_BATCH]["labels"]) == [cagul_targets[i] for i in forget]
    assert set(unlearning[REFUSAL_BATCH]) == set(supervised)
    assert TRUE_ANSWER_BATCH not in cagul and TRUE_ANSWER_BATCH not in unlearning


def test_the_true_answer_batch_holds_the_forget_rows_answers_only_when_asked() -> None:
    """CAGUL's depth term reads the forget rows with their true answers, as a nested batch that
    leaves every other key of the batch as it was, and shares each augmented photo."""
    _, processor = _vlm("llava")
    policy = replace(CAGUL_TARGETS, true_answer_batch=True)
    plain = CagulDataCollator(processor, augment=PhotoAugmentation(seed=1))(_features())
    batch = CagulDataCollator(processor, augment=PhotoAugmentation(seed=1), policy=policy)(
        _features()
    )
    assert set(batch) == set(plain) | {TRUE_ANSWER_BATCH}
    for key in plain:
        assert torch.equal(batch[key], plain[key]), key
    nested = batch[TRUE_ANSWER_BATCH]
    assert set(nested) == (set(plain) - {FORGET_FLAG}) | {REPLACED_FLAG}
    assert nested[REPLACED_FLAG].tolist() == [True, True]  # both forget targets are refusals
    tokenizer = processor.tokenizer
    answers = [tokenizer.decode(target).split() for target in _targets(nested["labels"])]
    forget = [row for row in ROWS if row["split"] == "forget"]
    assert answers == [[*_words(row["answer"]), tokenizer.eos_token] for row in forget]
    assert torch.equal(nested["pixel_values"], batch["pixel_values"][: len(forget)])
    # The same prompts as the main batch: the query mask ranks the same visual tokens.
    for index in range(len(forget)):
        query = batch["query_mask"][index]
        assert torch.equal(
            nested["input_ids"][index][nested["query_mask"][index]],
            batch["input_ids"][index][query],
        )
    retain_only = [row for row in _features() if row["split"] == "retain"]
    assert TRUE_ANSWER_BATCH not in CagulDataCollator(processor, policy=policy)(retain_only)


def test_the_refusal_batch_shares_each_augmented_photo_and_needs_forget_rows() -> None:
    _, processor = _vlm("llava")
    collator = UnlearningDataCollator(
        processor, augment=PhotoAugmentation(seed=1), with_refusals=True
    )
    batch = collator(_features())
    assert torch.equal(batch[REFUSAL_BATCH]["pixel_values"], batch["pixel_values"][:2])
    retain_only = [row for row in _features() if row["split"] == "retain"]
    assert REFUSAL_BATCH not in collator(retain_only)
    with pytest.raises(ValueError, match="UnlearningDataCollator got an empty batch"):
        collator([])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_refusal_choice_is_deterministic(family: str) -> None:
    _, processor = _vlm(family)
    first = CagulDataCollator(processor)(_features())
    again = CagulDataCollator(processor)(_features())
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    collator = CagulDataCollator(processor)
    refusals = {collator.target_text({**ROWS[1], "answer": f"{n}"}) for n in range(40)}
    assert refusals <= set(DEFAULT_REFUSALS) and len(refusals) > 1
    assert collator.target_text(ROWS[1]) == collator.target_text(dict(ROWS[1]))
    custom = CagulDataCollator(processor, refusals=["no ."], seed=3)
    assert custom.target_text(ROWS[1]) == "no ."


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_collator_on_dataset_rows_with_pil_and_paths(family: str, tmp_path: Path) -> None:
    _, processor = _vlm(family)
    collator = CagulDataCollator(processor)
    features = _features()
    dataset = Dataset.from_dict(_columns(features))
    validate_dataset(dataset)
    from_pil = _check_batch(family, collator, [dataset[index] for index in range(len(dataset))])

    for index, row in enumerate(features):
        row["image"] = str(tmp_path / f"{index}.png")
        _image(index).save(row["image"])
    dataset = Dataset.from_dict(_columns(features))
    validate_dataset(dataset)
    assert dataset.features["image"].dtype == "string"
    from_paths = _check_batch(family, collator, [dataset[index] for index in range(3)])
    for key in from_pil:
        assert torch.equal(from_pil[key], from_paths[key]), key


def test_collator_without_chat_template(monkeypatch: pytest.MonkeyPatch) -> None:
    _, processor = _vlm("llava")
    monkeypatch.setattr(processor, "chat_template", None)
    collator = CagulDataCollator(processor)
    assert collator.prompt_text("who is he ?") == f"{TINY_IMAGE_PLACEHOLDER['llava']} who is he ?"
    batch = _check_batch("llava", collator, _features())
    # Without a template the tokenizer's own bos starts every sample, once.
    assert (batch["input_ids"][:, 0] == processor.tokenizer.bos_token_id).all()
    assert (batch["input_ids"][:, 1] != processor.tokenizer.bos_token_id).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prompt_lengths_fallback_agrees(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, processor = _vlm(family)
    collator = CagulDataCollator(processor)
    fast = collator(_features())
    monkeypatch.setattr(collator, "_prompt_lengths_from_text", lambda *args, **kwargs: None)
    slow = collator(_features())
    for key in fast:
        assert torch.equal(fast[key], slow[key]), key


def test_padding_side_is_restored() -> None:
    _, processor = _vlm("qwen2_vl")
    processor.tokenizer.padding_side = "left"
    try:
        batch = CagulDataCollator(processor)(_features())
    finally:
        side = processor.tokenizer.padding_side
        processor.tokenizer.padding_side = "right"
    assert side == "left"
    assert batch["attention_mask"][:, 0].all()  # right padding: every row starts with a token


def test_max_length_never_truncates() -> None:
    _, processor = _vlm("llava")
    features = _features()
    longest = int(CagulDataCollator(processor)(features)["attention_mask"].sum(1).max())
    CagulDataCollator(processor, max_length=longest)(features)
    with pytest.raises(ValueError, match=r"max_length=10;.*cut into its image tokens"):
        CagulDataCollator(processor, max_length=10)(features)
    with pytest.raises(ValueError, match=rf"is {longest} tokens long.*max_length={longest - 1}"):
        CagulDataCollator(processor, max_length=longest - 1)(features)


def test_collator_rejects_rows_it_cannot_use() -> None:
    _, processor = _vlm("idefics3")
    collator = CagulDataCollator(processor)
    features = _features()
    del features[1]["image"]
    with pytest.raises(ValueError, match=r"row 1 lacks column\(s\) 'image'.*remove_unused_columns"):
        collator(features)
    features = _features()
    features[2]["split"] = "keep"
    with pytest.raises(ValueError, match=r"row 2.*'keep'"):
        collator(features)
    features = _features()
    features[0]["image"] = "/does/not/exist.png"
    with pytest.raises(ValueError, match=r"what is the name of this person \?.*does not exist"):
        collator(features)
    with pytest.raises(ValueError, match="refusals"):
        CagulDataCollator(processor, refusals=[])


def test_prefix_lm_target_is_the_causal_suffix() -> None:
    """PaliGemma attends bidirectionally within its prefix: the collator makes the target the
    causal suffix, so the prompt (which ranks and gates the image) never sees the answer."""
    model, processor = _vlm("paligemma")
    collator = CagulDataCollator(processor)
    batch = collator(_features())
    assert torch.equal(batch["token_type_ids"].bool(), batch["labels"] != -100)

    def prompt_logits(answer: str, bidirectional: bool = False) -> torch.Tensor:
        row = {**ROWS[2], "image": _image(0), "answer": answer}
        inputs = collator([row])
        start = int((inputs["labels"][0] != -100).nonzero()[0])
        if bidirectional:  # what the processor alone marks: everything prefix
            inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])
        inputs = {k: v for k, v in inputs.items() if k not in MODEL_KEYS_EXCLUDED}
        with torch.no_grad():
            return model(**inputs).logits[0, :start]

    torch.testing.assert_close(prompt_logits("a doctor ."), prompt_logits("he lives in rome ."))
    assert not torch.allclose(
        prompt_logits("a doctor .", bidirectional=True),
        prompt_logits("he lives in rome .", bidirectional=True),
    )

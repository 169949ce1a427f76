"""Attacks on the gate: white-box PGD within its budget, black-box views until the oracle gives
in, each deterministic from its seed; and the random views they rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from vlm_inputs import image

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.data import PhotoAugmentation
from hf_cagul.evaluation.attacks import (
    BLACK_BOX_VIEWS,
    WhiteBoxUnsupportedError,
    black_box_attack,
    is_refusal,
    refusals_of,
    run_attacks,
    white_box_attack,
)
from hf_cagul.evaluation.report import write_report
from hf_cagul.evaluation.suite import gate_scores
from hf_cagul.tiny import tiny_vlm


def photos(count: int = 3) -> Dataset:
    return Dataset.from_dict(
        {
            "image": [image(seed, size=32) for seed in range(count)],
            "question": ["what is the name of this person ?"] * count,
            "keywords": [["ada"]] * count,
        }
    )


def flagging_model(gate: str = "visual_tokens", family: str = "llava"):
    """A tiny model whose random gate flags every photo of `photos` (threshold 0.5), by a
    margin small enough for an attack to matter."""
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig(gate=gate))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.active_adapter_module.discriminator.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        head = model.active_adapter_module.discriminator.head
        logits = torch.logit(torch.tensor(gate_scores(model, processor, photos()))).double()
        head.bias += 0.5 - float(logits.min())  # every photo's logit >= 0.5
    return model, processor


def logits_of(model, processor, rows: Dataset) -> torch.Tensor:
    return torch.logit(torch.tensor(gate_scores(model, processor, rows)).double())


@pytest.mark.parametrize("gate", ["visual_tokens", "language_state"])
def test_white_box_lowers_the_gate_within_its_budget_deterministically(gate) -> None:
    model, processor = flagging_model(gate)
    rows = photos()
    clean = logits_of(model, processor, rows)
    result = white_box_attack(model, processor, rows, budget=16, steps=4, seed=1)
    attacked = Dataset.from_dict({"image": result.images, "question": rows["question"]})
    # The gradient reaches the pixels through whatever the gate reads (the language model's
    # state included), and the logit measured through the real processor falls.
    assert (logits_of(model, processor, attacked) < clean - 1e-3).all()
    assert result.max_change is not None and 0 < result.max_change <= 16
    for before, after in zip(rows["image"], result.images, strict=True):
        change = np.abs(np.asarray(after, np.int16) - np.asarray(before, np.int16))
        assert change.max() <= 16
    assert result.flagged == 3 and 0 <= result.evaded <= 3
    assert 0.0 <= result.leak <= 1.0 and 0.0 <= result.base_leak <= 1.0
    again = white_box_attack(model, processor, rows, budget=16, steps=4, seed=1)
    other = white_box_attack(model, processor, rows, budget=16, steps=4, seed=2)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(result.images, again.images, strict=True)
    )
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(result.images, other.images, strict=True)
    )


def test_white_box_never_touches_the_base_weights() -> None:
    model, processor = flagging_model()
    before = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    white_box_attack(model, processor, photos(1), budget=8, steps=2)
    after = dict(model.base_model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in model.parameters())


def test_white_box_refuses_processors_that_cut_photos_into_patches(tmp_path) -> None:
    vlm, processor = tiny_vlm("qwen2_vl")
    model = get_cagul_model(vlm, CagulConfig())
    with pytest.raises(WhiteBoxUnsupportedError, match="black_box_attack"):
        white_box_attack(model, processor, photos(1), budget=4)
    # run_attacks says why and still runs the black-box attacker.
    attacks = run_attacks(model, processor, photos(1), steps=1, queries=2, progress=False)
    assert "pixel_values of shape (photos, 3, H, W)" in attacks["white_box_skipped"]
    assert list(attacks["rows"]) == [
        "none",
        "black-box 2 queries (answer)",
        "black-box 2 queries (gate)",
    ]
    write_report(tmp_path, {"results": {"cagul": {}}, "attacks": attacks})
    assert "No white-box attack: The white-box attack needs" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("budget, steps", [(0, 4), (4, 0)])
def test_white_box_refuses_an_empty_budget(budget, steps) -> None:
    model, processor = flagging_model()
    with pytest.raises(ValueError, match="at least 1"):
        white_box_attack(model, processor, photos(1), budget=budget, steps=steps)


def test_black_box_gate_oracle_stops_at_the_first_view_the_gate_passes() -> None:
    model, processor = flagging_model()
    rows = photos()
    threshold = model.active_config.gate_threshold
    # Half the clean photos' lowest score: some views fall below, none of the photos does.
    model.active_config.gate_threshold = float(np.median(gate_scores(model, processor, rows)))
    threshold = model.active_config.gate_threshold
    result = black_box_attack(
        model, processor, rows, queries=12, seed=3, oracle="gate", batch_size=5
    )
    views = Dataset.from_dict({"image": result.images, "question": rows["question"]})
    scores = gate_scores(model, processor, views)
    clean = gate_scores(model, processor, rows)
    for index, (score, before) in enumerate(zip(scores, clean, strict=True)):
        if before > threshold and score <= threshold:  # evaded: the stopping view is the first
            view = PhotoAugmentation(seed=3 * 1_000_003 + index, **BLACK_BOX_VIEWS)
            earlier = [view(rows[index]["image"]) for _ in range(11)]
            first = next(
                i
                for i, candidate in enumerate(earlier)
                if gate_scores(
                    model,
                    processor,
                    Dataset.from_dict(
                        {"image": [candidate], "question": [rows[index]["question"]]}
                    ),
                )[0]
                <= threshold
            )
            assert np.array_equal(np.asarray(earlier[first]), np.asarray(result.images[index]))
    assert result.evaded == sum(
        b > threshold and a <= threshold for b, a in zip(clean, scores, strict=True)
    )
    assert 1 <= result.queries <= 12
    again = black_box_attack(
        model, processor, rows, queries=12, seed=3, oracle="gate", batch_size=5
    )
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(result.images, again.images, strict=True)
    )


def test_black_box_answer_oracle_stops_at_the_first_answer_that_is_no_refusal() -> None:
    model, processor = flagging_model()
    rows = photos(2)
    # No answer is a refusal: the photo itself, the first query, already gives in.
    result = black_box_attack(model, processor, rows, queries=5, refusals=[], progress=False)
    assert result.queries == 1.0
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(result.images, rows["image"], strict=True)
    )
    assert result.flagged == 2 and result.evaded == 0


def test_black_box_refuses_bad_arguments() -> None:
    model, processor = flagging_model()
    with pytest.raises(ValueError, match="queries"):
        black_box_attack(model, processor, photos(1), queries=0)
    with pytest.raises(ValueError, match="oracle"):
        black_box_attack(model, processor, photos(1), oracle="pixels")  # type: ignore[arg-type]


def test_refusals() -> None:
    assert is_refusal("I don't know .", ["i don't know."])
    assert is_refusal("sorry , i don't know who", ["I don't know"])
    assert not is_refusal("this is ada lovelace .", ["I don't know."])
    assert not is_refusal("anything", [])
    rows = Dataset.from_dict({"forget_target": ["i don't know .", None, "i don't know ."]})
    assert refusals_of(rows) == ["i don't know ."]
    assert refusals_of(Dataset.from_dict({"question": ["?"]})) == refusals_of()
    assert "I don't know." in refusals_of()


def test_run_attacks_gives_the_report_its_table(tmp_path) -> None:
    model, processor = flagging_model()
    attacks = run_attacks(
        model, processor, photos(2), budgets=(16, 2), steps=2, queries=3, progress=False
    )
    assert list(attacks["rows"]) == [
        "none",
        "white-box 2/255",
        "white-box 16/255",
        "black-box 3 queries (answer)",
        "black-box 3 queries (gate)",
    ]
    none = attacks["rows"]["none"]
    assert none["evaded"] == 0 and none["flagged"] == 2 and none["max_change"] == 0
    # The report's plot reads each white-box row's budget from the row, not from its name.
    assert [row["budget"] for row in attacks["rows"].values()] == [None, 2, 16, None, None]
    half = [
        budget
        for budget in (2, 16)
        if attacks["rows"][f"white-box {budget}/255"]["evasion_rate"] > 0.5
    ]
    assert attacks["white_box_half_budget"] == (half[0] if half else None)
    with pytest.raises(ValueError, match="no rows"):
        run_attacks(model, processor, photos(0), progress=False)
    written = write_report(
        tmp_path, {"results": {"cagul": {"forget_keyword": 0.0}}, "attacks": attacks}
    )
    report = (tmp_path / "report.md").read_text()
    assert "## Attacks on the gate" in report and "white-box 16/255" in report
    assert tmp_path / "attacks.png" in written


def test_views_flip_rotate_and_shift_colours_only_when_asked() -> None:
    photo = image(0, size=32)
    still = {
        "max_shift": 0.0,
        "min_crop": 1.0,
        "brightness": (1.0, 1.0),
        "max_noise": 0.0,
        "jpeg_probability": 0.0,
    }
    assert np.array_equal(np.asarray(PhotoAugmentation(**still)(photo)), np.asarray(photo))
    flipped = PhotoAugmentation(**still, flip_probability=1.0)(photo)
    assert np.array_equal(np.asarray(flipped), np.asarray(photo)[:, ::-1])
    for option in ({"max_rotation": 30.0}, {"contrast": (0.5, 0.6)}, {"saturation": (0.2, 0.3)}):
        changed = PhotoAugmentation(**still, **option)(photo)
        assert changed.size == photo.size
        assert not np.array_equal(np.asarray(changed), np.asarray(photo)), option

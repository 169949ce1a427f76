"""Named adapters (PEFT-style) and their composition when several are active."""

from __future__ import annotations

import math
import os

import pytest
import torch
from safetensors.torch import load_file
from vlm_inputs import assert_identical, randomise_encoder, snapshot, standard_batch

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.tiny import tiny_vlm


def set_gate(model: CagulModel, name: str, probability: float, threshold: float = 0.5) -> None:
    """Make adapter ``name`` give every image ``probability``, flagging it above ``threshold``."""
    head = model.cagul_adapters[name].discriminator.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(math.log(probability / (1 - probability)))
    model.cagul_config[name].gate_threshold = threshold


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def saved_pair(tmp_path):
    """Adapters "a" (25% of the tokens) and "b" (50%) with random encoders, saved apart."""
    vlm, processor = tiny_vlm("llava")
    torch.manual_seed(0)  # the gates' layers: the same whatever ran before in this process
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25), adapter_name="a")
    randomise_encoder(model, seed=1)
    model.add_adapter("b", CagulConfig(token_ratio=0.5))
    model.set_adapter("b")
    randomise_encoder(model, seed=2)
    model.save_adapter(tmp_path / "a", "a")
    model.save_adapter(tmp_path / "b", "b")
    return model.unload(), processor, tmp_path


@pytest.fixture
def pair(saved_pair):
    """A fresh `CagulModel` holding "a" (active) and "b", both loaded from disk."""
    vlm, processor, directory = saved_pair
    model = CagulModel.from_pretrained(vlm, directory / "a", adapter_name="a")
    model.load_adapter(directory / "b", "b")
    return model, processor


def test_load_set_and_delete_named_adapters(saved_pair) -> None:
    vlm, processor, directory = saved_pair
    before = snapshot(vlm)
    model = CagulModel.from_pretrained(vlm, directory / "a", adapter_name="a")
    model.load_adapter(directory / "b", "b")
    assert list(model.cagul_adapters) == ["a", "b"]
    assert model.active_adapters == ["a"] and model.active_adapter == "a"
    assert model.active_config.token_ratio == 0.25
    assert not any(p.requires_grad for p in model.cagul_adapters["b"].parameters())

    model.set_adapter(["b", "a"])
    assert model.active_adapters == ["b", "a"]
    with pytest.raises(ValueError, match=r"2 adapters are active \(\['b', 'a'\]\)"):
        _ = model.active_adapter
    with pytest.raises(ValueError, match="set_adapter"):
        _ = model.active_config
    model.active_adapters.append("c")  # a copy: the model's list is unchanged
    assert model.active_adapters == ["b", "a"]

    model.set_adapter("b")
    assert model.active_adapter == "b" and model.active_config.token_ratio == 0.5
    model.delete_adapter("a")
    assert list(model.cagul_adapters) == ["b"] and list(model.cagul_config) == ["b"]
    inputs = standard_batch(processor, "llava")
    set_gate(model, "b", 0.9)
    model(**inputs)
    assert all(not p.requires_grad for p in vlm.parameters())
    assert model.unload() is vlm
    assert_identical(before, vlm)


def test_add_adapter_is_fresh_trainable_and_inactive(pair) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    model.add_adapter("fresh", CagulConfig())
    assert model.active_adapters == ["a"]
    assert all(p.requires_grad for p in model.cagul_adapters["fresh"].parameters())
    assert model.cagul_config["fresh"].family == "llava"  # bound to the model
    model.set_adapter("fresh")
    with model.disable_adapter():
        bare = logits(model, inputs)
    with model.force_gate(True):
        assert torch.equal(logits(model, inputs), bare)  # identity encoder


@pytest.mark.parametrize(
    ("p_a", "p_b", "order", "winner"),
    [
        (0.7, 0.9, ["a", "b"], "b"),  # both flag: the higher probability rewrites
        (0.95, 0.6, ["a", "b"], "a"),
        (0.8, 0.8, ["a", "b"], "a"),  # a tie: the first in active order
        (0.8, 0.8, ["b", "a"], "b"),
    ],
)
def test_the_most_confident_flagging_adapter_rewrites(pair, p_a, p_b, order, winner) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    set_gate(model, "a", p_a)
    set_gate(model, "b", p_b)
    model.set_adapter(winner)
    with model.trace() as alone_traces:
        alone = logits(model, inputs)
    model.set_adapter(order)
    with model.trace() as traces:
        composed = logits(model, inputs)
    assert torch.equal(composed, alone)
    assert [t.adapter for t in traces] == [winner, winner]
    assert all(t.flagged for t in traces)
    assert traces[0].probabilities == pytest.approx({"a": p_a, "b": p_b})
    assert traces[0].probability == pytest.approx({"a": p_a, "b": p_b}[winner])
    for trace, single in zip(traces, alone_traces, strict=True):
        assert torch.equal(trace.selected, single.selected)
        assert len(trace.selected) == {"a": 4, "b": 8}[winner]  # the winner's token ratio


def test_only_flagging_adapters_compete(pair) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    set_gate(model, "a", 0.3, threshold=0.2)  # flags
    set_gate(model, "b", 0.8, threshold=0.9)  # more confident, but below its own threshold
    model.set_adapter("a")
    alone = logits(model, inputs)
    model.set_adapter(["b", "a"])
    with model.trace() as traces:
        assert torch.equal(logits(model, inputs), alone)
    assert [(t.adapter, t.flagged) for t in traces] == [("a", True), ("a", True)]


def test_an_image_no_adapter_flags_passes_untouched(pair) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    with model.disable_adapter():
        bare = logits(model, inputs)
    set_gate(model, "a", 0.1)
    set_gate(model, "b", 0.4)
    model.set_adapter(["a", "b"])
    with model.trace() as traces:
        assert torch.equal(logits(model, inputs), bare)
    assert [(t.flagged, t.adapter, t.selected) for t in traces] == [(False, "b", None)] * 2
    with model.force_gate(False):
        assert torch.equal(logits(model, inputs), bare)


def test_each_image_goes_to_its_own_adapter(pair) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    head = model.cagul_adapters["a"].discriminator.head
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(3))
        head.bias.zero_()
    model.cagul_config["a"].gate_threshold = 0.01
    with model.trace() as traces:
        alone_a = logits(model, inputs)
    assert all(trace.flagged for trace in traces)  # both rewritten by "a" alone
    low, high = sorted(range(2), key=lambda i: traces[i].probability)
    middle = (traces[low].probability + traces[high].probability) / 2
    set_gate(model, "b", middle, threshold=0.01)
    model.set_adapter("b")
    with model.trace() as traces:
        alone_b = logits(model, inputs)
    assert all(trace.flagged for trace in traces)  # and both by "b" alone
    model.set_adapter(["a", "b"])
    with model.trace() as traces:
        composed = logits(model, inputs)
    assert traces[high].adapter == "a" and traces[low].adapter == "b"
    assert torch.allclose(composed[high], alone_a[high], atol=1e-5)
    assert torch.allclose(composed[low], alone_b[low], atol=1e-5)
    assert not torch.allclose(alone_a[low], alone_b[low], atol=1e-3)


def test_save_and_reload_several_adapters(pair, tmp_path) -> None:
    model, processor = pair
    inputs = standard_batch(processor, "llava")
    model.add_adapter("default", CagulConfig(token_ratio=0.75))
    model.set_adapter("default")
    randomise_encoder(model, seed=4)
    for name, probability in (("default", 0.6), ("a", 0.7), ("b", 0.8)):
        set_gate(model, name, probability)
    model.set_adapter(["default", "a", "b"])
    expected = logits(model, inputs)

    model.save_pretrained(tmp_path / "all")
    assert sorted(os.listdir(tmp_path / "all")) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, "README.md", "a", "b"]
    )
    for name in ("a", "b"):
        tensors = load_file(tmp_path / "all" / name / WEIGHTS_NAME)
        assert tensors.keys() == model.cagul_adapters[name].state_dict().keys()
        assert all(
            torch.equal(tensors[key], value)
            for key, value in model.cagul_adapters[name].state_dict().items()
        )
    model.save_pretrained(tmp_path / "some", selected_adapters=["b"])
    assert sorted(os.listdir(tmp_path / "some")) == ["b"]

    vlm = model.unload()
    reloaded = CagulModel.from_pretrained(vlm, tmp_path / "all")
    for name in ("a", "b"):
        reloaded.load_adapter(tmp_path / "all" / name, name)
    assert reloaded.active_adapter == "default"
    reloaded.set_adapter(["default", "a", "b"])
    with reloaded.trace() as traces:
        assert torch.equal(logits(reloaded, inputs), expected)
    assert [t.adapter for t in traces] == ["b", "b"]
    with pytest.raises(ValueError, match="No adapter named 'c'"):
        reloaded.save_pretrained(tmp_path / "none", selected_adapters=["c"])
    assert not (tmp_path / "none").exists()


def test_errors_name_the_fix(pair, tmp_path) -> None:
    model, _ = pair
    with pytest.raises(ValueError, match=r"No adapter named 'nope'; this model holds \['a', 'b'\]"):
        model.set_adapter(["a", "nope"])
    assert model.active_adapters == ["a"]
    with pytest.raises(ValueError, match="at least one"):
        model.set_adapter([])
    with pytest.raises(ValueError, match="twice"):
        model.set_adapter(["a", "a"])
    with pytest.raises(ValueError, match="No adapter named 'nope'"):
        model.delete_adapter("nope")
    with pytest.raises(ValueError, match=r"'a' is active .* `set_adapter\('b'\)`"):
        model.delete_adapter("a")
    with pytest.raises(ValueError, match="'b' already exists"):
        model.add_adapter("b", CagulConfig())
    with pytest.raises(ValueError, match="Invalid adapter name"):
        model.add_adapter("../escape", CagulConfig())
    model.save_adapter(tmp_path / "b", "b")
    with pytest.raises(ValueError, match="'a' already exists"):
        model.load_adapter(tmp_path / "b", "a")
    model.set_adapter("b")
    model.delete_adapter("a")
    with pytest.raises(ValueError, match=r"only adapter.*unload\(\)"):
        model.delete_adapter("b")
    with pytest.raises(ValueError, match=r"Cannot merge .* fit one adapter on the union"):
        model.merge_adapters(["b"], "merged")
    with pytest.raises(ValueError, match="No adapter named 'x'"):
        model.merge_adapters(["b", "x"], "merged")


def test_incompatible_adapter_is_refused_and_nothing_is_added(pair, tmp_path) -> None:
    model, _ = pair
    wider, _ = tiny_vlm("llava", hidden_size=96)
    other = get_cagul_model(wider, CagulConfig())
    other.save_pretrained(tmp_path / "wide")
    other.unload()
    with pytest.raises(ValueError, match=r"hidden_size: adapter 96, this model 64"):
        model.load_adapter(tmp_path / "wide", "wide")
    with pytest.raises(ValueError, match=r"hidden_size: adapter 96, this model 64"):
        model.add_adapter("wide", other.cagul_config["default"])
    assert list(model.cagul_adapters) == ["a", "b"] and list(model.cagul_config) == ["a", "b"]


def test_trainer_refuses_several_active_adapters(pair, tmp_path) -> None:
    model, processor = pair
    model.add_adapter("new", CagulConfig())
    model.set_adapter(["a", "new"])
    args = CagulTrainingConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match=r"fits one adapter, but 2 are active.*set_adapter"):
        CagulTrainer(model=model, args=args, processing_class=processor)
    model.set_adapter("new")
    trainer = CagulTrainer(model=model, args=args, processing_class=processor)
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == {
        f"cagul_adapters.new.{n}" for n, _ in model.cagul_adapters["new"].named_parameters()
    }

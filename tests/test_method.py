"""The method's seams: gate classes by config, gate outputs as outputs, precomputed scores."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from vlm_inputs import randomise_encoder, snapshot, standard_batch, tiny_dataset

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, CagulTrainingConfig, get_cagul_model
from hf_cagul.config import CONFIG_NAME
from hf_cagul.evaluation.suite import discriminator_metrics
from hf_cagul.gates import GATES, ForgetDiscriminator, Gate, GateInputs, register_gate
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

SRC = Path(__file__).resolve().parents[1] / "src" / "hf_cagul"


class MeanNormGate(Gate):
    """Flags every image whose mean visual-token norm exceeds ``threshold`` (no parameters)."""

    name = "test-mean-norm"
    threshold = 0.0

    def __init__(self, config: CagulConfig) -> None:
        super().__init__()

    def forward(self, inputs: GateInputs) -> torch.Tensor:
        norms = inputs.tokens.float().norm(dim=-1)
        sums = norms.new_zeros(inputs.num_images).index_add(0, inputs.image_index, norms)
        counts = torch.bincount(inputs.image_index, minlength=inputs.num_images)
        return 50.0 * (sums / counts - self.threshold)


@pytest.fixture
def mean_norm_gate():
    register_gate(MeanNormGate)
    yield MeanNormGate
    del GATES[MeanNormGate.name]


def logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_a_new_gate_class_plugs_in_by_config(mean_norm_gate, tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    inputs = standard_batch(processor, "llava")
    bare = logits(vlm, inputs)
    model = get_cagul_model(vlm, CagulConfig(gate=mean_norm_gate.name))
    randomise_encoder(model)
    assert isinstance(model.active_adapter_module.discriminator, MeanNormGate)
    mean_norm_gate.threshold = 1e9  # flags nothing: bit-identical to the bare model
    assert torch.equal(logits(model, inputs), bare)
    mean_norm_gate.threshold = 0.0  # flags every image: rewritten
    with model.trace() as traces:
        flagged = logits(model, inputs)
    assert traces and all(t.flagged for t in traces)
    assert not torch.allclose(flagged, bare)
    # The trainer, the evaluation and persistence take it without a change.
    trainer = CagulTrainer(
        model=model,
        args=CagulTrainingConfig(
            output_dir=str(tmp_path / "fit"),
            max_steps=1,
            per_device_train_batch_size=4,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
        ),
        train_dataset=tiny_dataset(),
        processing_class=processor,
    )
    trainer.train()
    rows = tiny_dataset()
    metrics = discriminator_metrics(model, processor, rows, rows)
    assert metrics["tpr"] == 1.0 and metrics["fpr"] == 1.0
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert saved["gate"] == mean_norm_gate.name
    reloaded = CagulModel.from_pretrained(model.unload(), tmp_path / "adapter")
    assert isinstance(reloaded.active_adapter_module.discriminator, MeanNormGate)


def test_an_unknown_gate_is_refused_before_the_model_changes() -> None:
    vlm, _ = tiny_vlm("llava")
    before = [p.requires_grad for p in vlm.parameters()]
    with pytest.raises(ValueError, match=r"Unknown gate 'nope'.*visual_tokens"):
        get_cagul_model(vlm, CagulConfig(gate="nope"))
    assert [p.requires_grad for p in vlm.parameters()] == before
    assert not vlm._forward_pre_hooks


def test_adapters_saved_before_gates_had_names_load_as_the_papers_gate(tmp_path) -> None:
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig())
    torch.nn.init.normal_(model.active_adapter_module.discriminator.head.weight)
    inputs = standard_batch(processor, "llava")
    with model.trace() as traces:
        model(**inputs)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["gate"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    reloaded = CagulModel.from_pretrained(model.unload(), tmp_path)
    assert isinstance(reloaded.active_adapter_module.discriminator, ForgetDiscriminator)
    with reloaded.trace() as again:
        reloaded(**inputs)
    assert [t.probability for t in again] == [t.probability for t in traces]


def test_registering_a_taken_gate_name_is_refused() -> None:
    class Other(Gate):
        name = ForgetDiscriminator.name

    with pytest.raises(ValueError, match="already registered"):
        register_gate(Other)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_forward_returns_gate_logits_attached_to_the_graph(family) -> None:
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig())
    inputs = standard_batch(processor, family)
    with model.trace() as traces:
        output = model(**inputs)
    assert output.gate_logits.shape == (1, len(traces))
    assert output.gate_logits.requires_grad
    spans = [(t.sample, t.start, t.end) for t in traces]
    assert [tuple(span) for span in output.image_spans.tolist()] == spans
    assert torch.equal(output.gate_logits[0].detach(), torch.stack([t.logit for t in traces]))
    assert isinstance(output, type(vlm(**inputs)))  # still the VLM's output class
    output.gate_logits.sum().backward()
    head = model.active_adapter_module.discriminator.head
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    with model.disable_adapter():
        assert model(**inputs).get("gate_logits") is None


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gate_probabilities_stop_before_the_language_model(family) -> None:
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig())
    torch.nn.init.normal_(model.active_adapter_module.discriminator.head.weight)
    inputs = standard_batch(processor, family)
    with model.trace() as traces:
        model(**inputs)
    calls = []
    layer = model.family.decoder(vlm).layers[0]
    handle = layer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        scores = model.gate_probabilities(**inputs)
    finally:
        handle.remove()
    assert calls == []
    assert scores.adapters == ["default"]
    assert scores.probabilities[0].tolist() == [t.probability for t in traces]
    assert not scores.logits.requires_grad


def test_gate_probabilities_need_images() -> None:
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig())
    text = processor.tokenizer(["who is it ?"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs inputs with images"):
        model.gate_probabilities(**text)
    with pytest.raises(ValueError, match="needs inputs with images"):
        model.gate_inputs(**text)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gate_inputs_are_what_the_gate_reads(family) -> None:
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig())
    gate = model.active_adapter_module.discriminator
    torch.nn.init.normal_(gate.head.weight)
    inputs = standard_batch(processor, family)
    features = model.gate_inputs(**inputs)
    assert not features.tokens.requires_grad
    assert features.num_images == len(model.gate_probabilities(**inputs).image_spans)
    with torch.no_grad():
        logits = gate(features)
    assert torch.equal(logits, model.gate_probabilities(**inputs).logits[0])


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_precomputed_selection_scores_replace_the_attention_pass(family) -> None:
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model)
    inputs = standard_batch(processor, family)
    with torch.no_grad(), model.force_gate(True), model.trace() as traces:
        computed = model(**inputs).logits
    scores = torch.zeros(inputs["input_ids"].shape[0], max(t.end for t in traces))
    for trace in traces:
        scores[trace.sample, trace.start : trace.end] = trace.scores
    calls = []
    layer = model.family.decoder(vlm).layers[model._scoring_layer(model.active_config)]
    handle = layer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad(), model.force_gate(True), model.trace() as again:
            given = model(**inputs, selection_scores=scores).logits
            reversed_ = model(**inputs, selection_scores=-scores).logits
    finally:
        handle.remove()
    assert torch.equal(given, computed)
    assert len(calls) == 2  # the real forwards only: no truncated pass
    picked = [t.selected.tolist() for t in again[: len(traces)]]
    assert picked == [t.selected.tolist() for t in traces]
    assert not torch.equal(reversed_, computed)


def test_two_models_do_not_share_their_switches() -> None:
    (vlm_a, processor), (vlm_b, _) = tiny_vlm("llava"), tiny_vlm("llava", seed=1)
    a, b = get_cagul_model(vlm_a, CagulConfig()), get_cagul_model(vlm_b, CagulConfig())
    randomise_encoder(a)
    randomise_encoder(b)
    inputs = standard_batch(processor, "llava")
    with torch.no_grad(), b.force_gate(True):
        b_open = b(**inputs).logits
        with a.disable_adapter():
            assert torch.equal(b(**inputs).logits, b_open)  # b is still adapted
        with a.trace() as traces:
            b(**inputs)
    assert traces == []


def test_from_pretrained_refusal_leaves_the_model_untouched(tmp_path) -> None:
    vlm, _ = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig(encoder_hidden_size=8))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["encoder_hidden_size"] = 16  # no longer matches the weights
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    fresh, _ = tiny_vlm("llava")
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="does not match its config"):
        CagulModel.from_pretrained(fresh, tmp_path)
    assert all(p.requires_grad for p in fresh.parameters())
    assert not fresh._forward_pre_hooks and not fresh._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_the_hub_commit_of_the_model_is_recorded() -> None:
    vlm, _ = tiny_vlm("llava")
    vlm.config._commit_hash = "0123abcd" * 5
    model = get_cagul_model(vlm, CagulConfig())
    assert model.active_config.revision == "0123abcd" * 5


def test_the_method_imports_nothing_above_it() -> None:
    allowed = {"attention", "config", "families", "gates", "modules"}
    for module in ("method.py", "gates.py", "modules.py"):
        tree = ast.parse((SRC / module).read_text())
        imported = {
            node.module.split(".")[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("hf_cagul.")
        }
        assert imported <= allowed, (module, imported - allowed)

"""The adapter on VLMs placed by accelerate (offloaded to cpu / disk) and on quantized bases."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import tiny_dataset, training_args
from transformers import AutoModelForImageTextToText, PreTrainedModel
from transformers.trainer_utils import validate_quantization_for_training
from vlm_inputs import randomise_encoder, standard_batch

from hf_cagul import CagulConfig, CagulModel, CagulTrainer, get_cagul_model
from hf_cagul.devices import execution_device
from hf_cagul.tiny import tiny_vlm

# Embeddings, one decoder layer and the LM head wait on disk, the rest in memory: the
# decoder's input embeddings hold meta weights, loaded for each call by accelerate's hooks.
OFFLOADED = {
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    "model.language_model.embed_tokens": "disk",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.norm": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "disk",
}


def logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def adapted(vlm: PreTrainedModel) -> CagulModel:
    """A fresh adapter (gate closed) with a random encoder, the same for every call."""
    torch.manual_seed(0)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    return model


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_adapter_on_a_vlm_offloaded_to_disk(tmp_path: Path) -> None:
    vlm, processor = tiny_vlm("llava")
    vlm.save_pretrained(tmp_path / "vlm")
    dispatched = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "vlm", device_map=OFFLOADED, offload_folder=str(tmp_path / "offload")
    )
    embeddings = dispatched.get_decoder().get_input_embeddings()
    assert embeddings.weight.device.type == "meta"
    offloaded_bytes = folder_digest(tmp_path / "offload")
    inputs = standard_batch(processor, "llava")
    bare = logits(dispatched, inputs)

    model = adapted(dispatched)
    assert next(model.active_adapter_module.parameters()).device == execution_device(embeddings)
    assert next(model.active_adapter_module.parameters()).device.type == "cpu"
    with model.trace() as traces:
        closed = logits(model, inputs)
    assert traces and not any(trace.flagged for trace in traces)
    assert torch.equal(closed, bare)
    with model.force_gate(True):
        flagged = logits(model, inputs)
    assert not torch.equal(flagged, bare)
    # The same adapter on the same VLM held in memory rewrites the same way.
    reference = adapted(vlm)
    with reference.force_gate(True):
        in_memory = logits(reference, inputs)
    torch.testing.assert_close(flagged, in_memory)

    trainer = CagulTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=2),
        train_dataset=tiny_dataset(),
        processing_class=processor,
    )
    adapter_before = {k: v.clone() for k, v in model.active_adapter_module.state_dict().items()}
    trainer.train()
    adapter_after = model.active_adapter_module.state_dict()
    assert any(not torch.equal(adapter_before[k], adapter_after[k]) for k in adapter_before)
    assert torch.equal(logits(model.unload(), inputs), bare)
    assert folder_digest(tmp_path / "offload") == offloaded_bytes


def quantize_language_model(vlm: PreTrainedModel) -> None:
    """torch's dynamic int8 quantization of every Linear of the language model, in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(
            vlm.get_decoder(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


def test_adapter_on_a_dynamically_quantized_language_model(tmp_path: Path) -> None:
    vlm, processor = tiny_vlm("llava")
    inputs = standard_batch(processor, "llava")
    float_model = adapted(vlm)
    with float_model.trace() as float_traces:
        logits(float_model, inputs)
    float_model.unload()
    quantize_language_model(vlm)
    assert not any(isinstance(m, torch.nn.Linear) for m in vlm.get_decoder().modules())
    bare = logits(vlm, inputs)

    model = adapted(vlm)
    with model.trace() as traces:
        closed = logits(model, inputs)
    assert torch.equal(closed, bare)
    # The vision side is not quantized: the gate decides exactly as on the float model.
    assert [t.probability for t in traces] == [t.probability for t in float_traces]
    with model.force_gate(True):
        flagged = logits(model, inputs)
    assert not torch.equal(flagged, bare)
    assert torch.equal(logits(model.unload(), inputs), bare)

    # Quantized ops have no backward: fitting here would give silently wrong gradients.
    with pytest.raises(ValueError, match="Fit the adapter on the float"):
        CagulTrainer(
            model=adapted(vlm),
            args=training_args(tmp_path),
            train_dataset=tiny_dataset(),
            processing_class=processor,
        )


def test_trainer_accepts_a_vlm_quantized_by_transformers() -> None:
    """Trainer refuses "purely quantized" models; a CagulModel on one carries an adapter.

    bitsandbytes needs a GPU (``scripts/gpu_checks.py`` fits on a 4-bit and an 8-bit VLM);
    here the VLM is marked quantized the way transformers' quantizers mark it.
    """
    vlm, _ = tiny_vlm("llava")
    vlm.is_quantized = True
    with pytest.raises(ValueError, match="purely quantized"):
        validate_quantization_for_training(vlm)
    validate_quantization_for_training(get_cagul_model(vlm, CagulConfig()))

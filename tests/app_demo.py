"""A demo directory for the app's tests, built as ``hf-cagul demo`` lays one out, and the
answers and attention the library itself gives, to check the app against."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from vlm_inputs import image, randomise_encoder

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.app import DemoDirectory
from hf_cagul.data import CagulDataCollator
from hf_cagul.tiny import tiny_vlm

QUESTION = "what is the name of this person ?"
MAX_NEW_TOKENS = 16
CARD_METRICS = {"forget keyword accuracy": 0.125}
ROBUSTNESS = {
    "blur on photo": {"base forget_keyword": 0.75, "cagul forget_keyword": 0.25},
    "text-only questions (no photo)": {"base forget_keyword": 0.5, "cagul forget_keyword": 0.5},
    "paraphrased questions": {"base forget_keyword": 0.0, "cagul forget_keyword": 0.0},
}
FIT = {"auc": 0.875, "threshold": 0.5}


def make_demo_dir(root: Path, gate_bias: float = 4.0) -> DemoDirectory:
    """A tiny LLaVA (stage 1) and an adapter that rewrites visibly, saved under ``root``.

    The gate's head has zero weights and bias ``gate_bias``: every photo gets probability
    ``sigmoid(gate_bias)``, flagged above the default threshold 0.5 when the bias is positive.
    """
    demo = DemoDirectory(root)
    vlm, processor = tiny_vlm("llava")
    vlm.save_pretrained(demo.stage1)
    processor.save_pretrained(demo.stage1)
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    head = model.active_adapter_module.discriminator.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(gate_bias)
    model.save_pretrained(demo.adapter, evaluation=CARD_METRICS)
    demo.save_examples([image(1), image(2)], [QUESTION, "where was he born ?"])
    metrics = {
        "results": {"cagul": {"forget_keyword": 0.25}},
        "robustness": ROBUSTNESS,
        "discriminator": FIT,
        "timings": {"CAGUL fit": 12.5},
    }
    (root / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return demo


def load_demo_model(demo: DemoDirectory) -> tuple[CagulModel, Any]:
    """The demo's saved VLM, processor and adapter, loaded back."""
    from hf_cagul.cli import load_vlm

    vlm, processor = load_vlm(str(demo.stage1), device="cpu")
    return CagulModel.from_pretrained(vlm, demo.adapter), processor


@dataclass
class Expected:
    """What the library gives for one photo and question, by its own calls."""

    base_answer: str
    adapted_answer: str
    probability: float
    scores: list[float]
    selected: list[int]


@torch.no_grad()
def expected(model: CagulModel, processor: Any, photo: Image.Image, forced: bool) -> Expected:
    """Answers (greedy `generate`), the gate probability and the traced attention.

    Args:
        forced: Trace with the gate forced open (for a photo no gate flags).
    """
    collator = CagulDataCollator(processor)
    inputs = collator.prompts([photo], [QUESTION])
    prompt_length = inputs["input_ids"].shape[1]

    def answer() -> str:
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return collator.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)

    with model.disable_adapter():
        base_answer = answer()
    adapted_answer = answer()
    probability = model.gate_probabilities(**inputs).probabilities.item()
    forcing = model.force_gate(True) if forced else nullcontext()
    with forcing, model.trace() as traces:
        model(**inputs)
    (trace,) = traces
    assert trace.flagged and trace.scores is not None and trace.selected is not None
    return Expected(
        base_answer,
        adapted_answer,
        probability,
        trace.scores.tolist(),
        sorted((trace.selected - trace.start).tolist()),
    )

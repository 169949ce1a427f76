"""Robustness probes: does what was forgotten stay forgotten when the input shifts?

Each probe rewrites the forget rows (new phrasing, perturbed photo, no photo at all) and
measures keyword accuracy again. CAGUL acts on images: the text-only probe measures what a
question that names the person, without a photo, still gets, and reports it as it is.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image, ImageEnhance
from tqdm.auto import tqdm

from hf_cagul.data import load_image
from hf_cagul.devices import input_device
from hf_cagul.evaluation.generation import keyword_accuracy
from hf_cagul.evaluation.suite import generation_metrics


def add_noise(image: Image.Image, seed: int = 0, sigma: float = 20.0) -> Image.Image:
    """Gaussian pixel noise."""
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def center_crop(image: Image.Image, keep: float = 0.8) -> Image.Image:
    """Keep the central ``keep`` fraction of each side, resized back."""
    width, height = image.size
    dx, dy = int(width * (1 - keep) / 2), int(height * (1 - keep) / 2)
    return image.crop((dx, dy, width - dx, height - dy)).resize(image.size)


def jpeg(image: Image.Image, quality: int = 30) -> Image.Image:
    """A JPEG round trip at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def brighten(image: Image.Image, factor: float = 1.4) -> Image.Image:
    """Brightness times ``factor``."""
    return ImageEnhance.Brightness(image).enhance(factor)


IMAGE_PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "noise": add_noise,
    "crop": center_crop,
    "jpeg": jpeg,
    "brightness": brighten,
}


def perturb_images(dataset: Dataset, perturbation: Callable[[Image.Image], Image.Image]) -> Dataset:
    """``dataset`` with every photo perturbed."""
    rows = dataset.remove_columns("image").to_dict()
    rows["image"] = [perturbation(load_image(image)) for image in dataset["image"]]
    return Dataset.from_dict(rows)


def paraphrase_questions(dataset: Dataset) -> Dataset:
    """``dataset`` asked with the phrasing never used in training."""
    questions = list(dataset["paraphrased_question"])
    return dataset.remove_columns("question").add_column("question", questions)


@torch.no_grad()
def text_only_answers(
    model: Any, processor: Any, questions: list[str], max_new_tokens: int = 8
) -> list[str]:
    """Greedy answers to questions asked without any image."""
    tokenizer = processor.tokenizer
    device = input_device(model)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for start in range(0, len(questions), 32):
            prompts = [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "text", "text": question}]}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                if getattr(processor, "chat_template", None)
                else question
                for question in questions[start : start + 32]
            ]
            inputs = processor(text=prompts, return_tensors="pt", padding=True)
            inputs = {key: value.to(device) for key, value in inputs.items()}
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answers += tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
    finally:
        tokenizer.padding_side = padding_side
    return answers


def text_only_questions(dataset: Dataset) -> tuple[list[str], list[list[str]]]:
    """Questions that name the subject instead of showing them, with their keywords."""
    templates = {
        "name": None,  # the name is in the question: nothing to leak
        "birthplace": "where was {} born ?",
        "occupation": "what is the job of {} ?",
        "colour": "what is the favourite colour of {} ?",
    }
    seen: set[tuple[str, str]] = set()
    questions, keywords = [], []
    for row in dataset.remove_columns("image"):
        template = templates.get(row.get("fact", ""))
        key = (row["subject"], row.get("fact", ""))
        if template is None or key in seen:
            continue
        seen.add(key)
        questions.append(template.format(row["subject"]))
        keywords.append(list(row["keywords"]))
    return questions, keywords


def run_probes(
    models: dict[str, Any], processor: Any, forget_rows: Dataset, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Forget keyword accuracy of each model under every probe: ``probe -> model -> value``."""
    probes: dict[str, Dataset] = {}
    if "paraphrased_question" in forget_rows.column_names:
        probes["paraphrased questions"] = paraphrase_questions(forget_rows)
    for name, perturbation in IMAGE_PERTURBATIONS.items():
        probes[f"{name} on photo"] = perturb_images(forget_rows, perturbation)
    results: dict[str, dict[str, float]] = {}
    for probe, rows in tqdm(probes.items(), desc="robustness probes", disable=not progress):
        results[probe] = {
            f"{model_name} forget_keyword": generation_metrics(model, processor, rows)["keyword"]
            for model_name, model in models.items()
        }
    if {"subject", "fact"} <= set(forget_rows.column_names):
        questions, keywords = text_only_questions(forget_rows)
        if questions:
            results["text-only questions (no photo)"] = {
                f"{model_name} forget_keyword": keyword_accuracy(
                    text_only_answers(model, processor, questions), keywords
                )
                for model_name, model in models.items()
            }
    return results

"""What the inspector shows for one photo and question, computed without any web framework.

`inspect_photo` runs the library's own calls (`generate` with and without the adapter,
`CagulModel.gate_probabilities`, `CagulModel.trace`) and returns an `Inspection`; the Gradio
page only lays it out, so what the page shows can be checked against these calls directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from hf_cagul.data import CagulDataCollator
from hf_cagul.devices import input_device
from hf_cagul.evaluation.generation import generate_answers
from hf_cagul.evaluation.report import AttentionHeatmap, attention_figure, format_value
from hf_cagul.model import CagulModel

__all__ = [
    "GateRow",
    "Inspection",
    "adapter_details",
    "attention_text",
    "details_markdown",
    "gate_markdown",
    "inspect_photo",
    "markdown_table",
    "render_heatmap",
    "robustness_markdown",
]


@dataclass
class GateRow:
    """One active adapter's gate decision on a photo.

    Attributes:
        adapter: Adapter name.
        probability: Gate probability that the photo shows one of its forget subjects.
        threshold: Its ``gate_threshold``; the photo is flagged above it.
    """

    adapter: str
    probability: float
    threshold: float

    @property
    def flagged(self) -> bool:
        """Whether this gate flags the photo (``probability > threshold``)."""
        return self.probability > self.threshold


@dataclass
class Inspection:
    """Everything the inspector shows for one photo and question.

    Attributes:
        base_answer: Greedy answer of the base model (adapter disabled).
        adapted_answer: Greedy answer with the adapters active.
        gates: One `GateRow` per active adapter, in active order.
        heatmap: Attention scores over the visual-token grid and the rewritten tokens, or
            ``None`` where they do not lie on a square grid.
        forced: Whether ``heatmap`` comes from a pass with the gate forced open, because no
            gate flagged the photo (the adapted answer is then the base model's).
        note: Why there is no heat map, when there is none.
    """

    base_answer: str
    adapted_answer: str
    gates: list[GateRow]
    heatmap: AttentionHeatmap | None
    forced: bool
    note: str = ""

    @property
    def flagged(self) -> bool:
        """Whether any active gate flags the photo."""
        return any(row.flagged for row in self.gates)


@torch.no_grad()
def inspect_photo(
    model: CagulModel,
    processor: Any,
    image: Image.Image,
    question: str,
    max_new_tokens: int = 16,
) -> Inspection:
    """Answers, gate decisions and attention of ``model`` for one photo and question.

    Args:
        model: The adapted VLM.
        processor: Its processor.
        image: The photo.
        question: The question, as a user types it (the prompt is built as for training).
        max_new_tokens: Tokens each greedy answer may have.
    """
    rows = Dataset.from_dict({"image": [image], "question": [question]})
    with model.disable_adapter():
        (base_answer,) = generate_answers(model, processor, rows, 1, max_new_tokens, False)
    (adapted_answer,) = generate_answers(model, processor, rows, 1, max_new_tokens, False)

    inputs = CagulDataCollator(processor).prompts([image], [question])
    inputs = {key: value.to(input_device(model)) for key, value in inputs.items()}
    scores = model.gate_probabilities(**inputs)
    gates = [
        GateRow(name, float(scores.probabilities[row, 0]), model.cagul_config[name].gate_threshold)
        for row, name in enumerate(scores.adapters)
    ]
    forced = not any(row.flagged for row in gates)
    with ExitStack() as stack:
        if forced:
            stack.enter_context(model.force_gate(True))
        traces = stack.enter_context(model.trace())
        model(**inputs)
    trace = traces[0]
    assert trace.scores is not None and trace.selected is not None  # a flagged image's trace
    heatmap = AttentionHeatmap(
        image=image,
        scores=trace.scores.float().cpu().tolist(),
        selected=sorted((trace.selected - trace.start).cpu().tolist()),
        title=f"'{question}'" + (" (gate forced open)" if forced else ""),
    )
    try:
        heatmap.score_grid()
    except ValueError as err:
        return Inspection(base_answer, adapted_answer, gates, None, forced, note=str(err))
    return Inspection(base_answer, adapted_answer, gates, heatmap, forced)


def render_heatmap(heatmap: AttentionHeatmap) -> Image.Image:
    """The report's attention figure for ``heatmap``, as an RGB image."""
    canvas = FigureCanvasAgg(attention_figure(heatmap))
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def attention_text(inspection: Inspection) -> str:
    """The heat map's numbers as text: the rewritten token indices, then the score grid.

    Indices run row-major over the visual-token grid; scores have 6 significant digits.
    """
    if inspection.heatmap is None:
        return f"No heat map: {inspection.note}"
    grid, selected = inspection.heatmap.score_grid()
    how = "gate forced open (no gate flagged this photo)" if inspection.forced else "flagged"
    lines = [
        f"{how}; rewritten tokens: {', '.join(str(index) for index in selected.tolist())}",
        "scores:",
        *(" ".join(f"{score:.6g}" for score in row) for row in grid.tolist()),
    ]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table, cells formatted as in the run report (`format_value`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def gate_markdown(inspection: Inspection) -> str:
    """The gates' decisions as a markdown table, and what the adapter did."""
    table = markdown_table(
        ["adapter", "probability", "threshold", "flagged"],
        [[row.adapter, row.probability, row.threshold, row.flagged] for row in inspection.gates],
    )
    verdict = (
        "The photo is flagged: the adapter rewrote the tokens boxed in red."
        if inspection.flagged
        else "No gate flags the photo: the adapter leaves it untouched, and the heat map below "
        "shows what it would rewrite with the gate forced open."
    )
    return f"{table}\n\n{verdict}"


def robustness_markdown(robustness: Mapping[str, Mapping[str, Any]]) -> str:
    """A demo's ``robustness`` section (probe -> model metric -> value) as a table with a
    verdict per probe: ``forgets`` when the adapted model leaks less than the base model
    under it (forget keyword accuracy), ``does not forget`` when it leaks as much or more,
    ``nothing to forget`` when the base model does not leak either."""
    metrics = list(dict.fromkeys(key for values in robustness.values() for key in values))
    rows = []
    for probe, values in robustness.items():
        rows.append([probe, *(values.get(metric) for metric in metrics), _verdict(values)])
    return markdown_table(["probe", *metrics, "verdict"], rows)


def _verdict(values: Mapping[str, Any]) -> str | None:
    """One probe's verdict (see `robustness_markdown`); ``None`` without both models."""
    base, adapted = values.get("base forget_keyword"), values.get("cagul forget_keyword")
    if base is None or adapted is None:
        return None
    if adapted < base:
        return "forgets"
    return "nothing to forget" if base == 0 else "does not forget"


def adapter_details(model: CagulModel) -> dict[str, dict[str, Any]]:
    """Each loaded adapter's config (as saved in ``cagul_config.json``) and parameter count."""
    return {
        name: {
            **config.to_dict(),
            "parameters": sum(p.numel() for p in model.cagul_adapters[name].parameters()),
        }
        for name, config in model.cagul_config.items()
    }


def details_markdown(
    model: CagulModel, metrics: Mapping[str, Any] | None = None, card: str | None = None
) -> str:
    """The details tab: each adapter's config, the fit summary and the model card's metrics.

    Args:
        model: The adapted VLM.
        metrics: A demo run's ``metrics.json``: its ``discriminator`` section (the gate's
            held-out metrics) and fit time make the fit summary.
        card: The adapter's model card (``README.md``): its ``## Evaluation`` section is shown.
    """
    lines = []
    for name, details in adapter_details(model).items():
        lines += [
            f"## Adapter `{name}`",
            "",
            markdown_table(["setting", "value"], [*map(list, details.items())]),
            "",
        ]
    lines += ["## Fit summary", ""]
    fit = dict((metrics or {}).get("discriminator") or {})
    seconds = ((metrics or {}).get("timings") or {}).get("CAGUL fit")
    if seconds is not None:
        fit["fit seconds"] = seconds
    lines.append(
        markdown_table(["metric", "value"], [*map(list, fit.items())])
        if fit
        else "No fit summary: no demo run's `metrics.json` with a `discriminator` section."
    )
    lines += ["", "## Model card metrics", ""]
    evaluation = _card_section(card or "", "## Evaluation")
    lines.append(evaluation or "The adapter's model card has no evaluation table.")
    return "\n".join(lines) + "\n"


def _card_section(card: str, heading: str) -> str:
    """The body of the card's section under ``heading``, up to the next heading ("" if none)."""
    lines = card.splitlines()
    if heading not in lines:
        return ""
    body = lines[lines.index(heading) + 1 :]
    end = next((i for i, line in enumerate(body) if line.startswith("## ")), len(body))
    return "\n".join(body[:end]).strip()

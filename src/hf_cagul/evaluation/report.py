"""The run report: ``metrics.json``, a markdown ``report.md`` and its PNG plots.

Plots are drawn on `matplotlib.figure.Figure` objects with the Agg canvas directly, never
through `pyplot`, so writing a report leaves matplotlib's global backend and figure registry
untouched.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

MISSING = "—"
"""How a missing (absent, ``None`` or NaN) value is shown in the report."""

# Accuracy metrics drawn in ``accuracy.png``, in bar order: forget ones in reds, retain in blues.
# Visual-question accuracy is ``*_visual_keyword`` in `evaluate_model`, ``*_visual`` elsewhere.
_ACCURACY_SERIES = (
    ("forget_keyword", "#d62728"),
    ("forget_heldout_keyword", "#ff9896"),
    ("forget_visual_keyword", "#ff7f0e"),
    ("forget_visual", "#ff7f0e"),
    ("retain_keyword", "#1f77b4"),
    ("retain_visual_keyword", "#9ecae1"),
    ("retain_visual", "#9ecae1"),
)
# Top-level sections with a dedicated rendering; any other key gets a generic section.
_KNOWN_SECTIONS = (
    "title",
    "settings",
    "stage1",
    "results",
    "targets",
    "discriminator",
    "robustness",
    "attacks",
    "ablation",
    "comparison",
    "timings",
)

COMPARISON_COLUMNS: dict[str, str] = {
    "forget_keyword": "forget keyword acc. (lower better)",
    "forget_rougeL": "forget ROUGE-L (lower better)",
    "forget_quality": "forget quality (higher better)",
    "retain_keyword": "retain keyword acc.",
    "forget_visual_keyword": "visual-question acc., forget photos",
    "model_utility": "model utility",
    "mia_auc": "MIA AUC (0.5 best)",
    "fit_seconds": "fit time (s)",
    "peak_memory_mb": "peak fit memory (MiB)",
    "trainable_parameters": "trainable params",
    "base_weights_modified": "base weights modified",
}
"""Columns of the ``comparison`` section (metric key -> header), after ``method``."""
_STAGE1_KEYS = ("forget_keyword_accuracy", "threshold", "memorised")

GATE_METRICS: dict[str, str] = {
    "auc": "ROC AUC, held-out forget vs held-out retain photos",
    "tpr": "share of held-out forget photos flagged",
    "fpr": "share of held-out retain photos flagged",
    "threshold": "a photo is flagged when its gate probability is above it",
    "stranger_fpr": "share of strangers' photos flagged (people in neither set, never fitted on)",
    "stranger_photos": "strangers' photos measured",
    "leak_recall": "share of the held-out forget photos the base model answers (the leaks) "
    "that the gate flags",
    "leaking_photos": "held-out forget photos the base model answers",
    "mistaken_strangers": "strangers' photos the base model takes for a forget subject (it "
    "gives their answer: without a gate they leak it too)",
    "mistaken_recall": "share of those photos the gate flags",
    "stranger_fpr_unmistaken": "share of the other strangers' photos flagged",
}
"""What each key of the ``discriminator`` section measures, as the report explains it."""


@dataclass
class AttentionHeatmap:
    """Text->visual attention of one image, for the report's ``attention_heatmap.png``.

    Attributes:
        image: the photo, any size (drawn resized to the square token grid).
        scores: one attention score per visual token, row-major over a square grid.
        selected: indices (``0 .. len(scores) - 1``) of the tokens the encoder rewrote.
        title: figure title; a generic one when empty.
    """

    image: Image.Image
    scores: Sequence[float]
    selected: Sequence[int]
    title: str = ""

    def score_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The scores as a ``(side, side)`` array and the selected indices as an int array.

        Raises:
            ValueError: if the number of scores is not a (non-zero) perfect square, or a
                selected index is outside ``0 .. len(scores) - 1``.
        """
        scores = np.asarray(self.scores, dtype=float).reshape(-1)
        count = scores.size
        side = math.isqrt(count)
        if count == 0 or side * side != count:
            raise ValueError(
                f"AttentionHeatmap needs one score per visual token on a square grid, but got "
                f"{count} scores, which is not a perfect square."
            )
        selected = np.asarray(self.selected, dtype=int).reshape(-1)
        outside = selected[(selected < 0) | (selected >= count)]
        if outside.size:
            raise ValueError(
                f"AttentionHeatmap.selected has indices {outside.tolist()} outside "
                f"0..{count - 1} (there are {count} scores)."
            )
        return scores.reshape(side, side), selected


def format_value(value: Any) -> str:
    """A report cell for ``value``.

    ``None`` and NaN are ``"—"``; booleans ``"yes"``/``"no"``; integers as they are; other
    numbers with 3 decimals, or 3 significant digits when that would hide them (non-zero
    magnitudes below 0.001 or from 1e6 up, e.g. a learning rate); lists are comma-joined;
    mappings are compact JSON; anything else is ``str(value)``.
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return MISSING
        if number != 0 and math.isfinite(number) and not 1e-3 <= abs(number) < 1e6:
            return f"{number:.3g}"
        return f"{number:.3f}"
    if isinstance(value, Mapping):
        return json.dumps(_json_safe(value), sort_keys=True, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return ", ".join(format_value(item) for item in value)
    return str(value)


def write_report(
    output_dir: str | Path,
    metrics: Mapping[str, Any],
    heatmap: AttentionHeatmap | None = None,
) -> list[Path]:
    """Write ``metrics`` as ``metrics.json``, ``report.md`` and PNG plots into ``output_dir``.

    ``metrics`` is a JSON-serialisable nested mapping. Only ``results`` (model name -> metric
    name -> value, e.g. ``"base"``, ``"cagul"``, ``"gold"``) is required; the sections
    ``title``, ``settings``, ``stage1``, ``targets``, ``discriminator``, ``robustness``,
    ``attacks``, ``ablation`` and ``timings`` get a dedicated rendering when present, and any
    other top-level key a generic one (a table where its shape allows).

    Files (``output_dir`` is created if missing):

    - ``metrics.json``: ``metrics`` with indent 2 and sorted keys; NaN and infinities as null.
    - ``report.md``: the markdown report, embedding the plots with relative links. When
      ``stage1`` says the model did not memorise the forget set (``memorised`` false, or else
      ``forget_keyword_accuracy`` below ``threshold``), it carries a red ``WARNING:``.
    - ``accuracy.png``: per model, bars of the accuracy metrics present (``forget_keyword``,
      ``forget_heldout_keyword``, ``forget_visual_keyword`` or ``forget_visual``,
      ``retain_keyword``, ``retain_visual_keyword`` or ``retain_visual``).
    - ``leakage_vs_utility.png``: leakage against utility, one labelled point per model and
      per ``ablation`` variant (square markers). Leakage is ``forget_heldout_keyword`` (photos
      never fitted on) when every point has it, else ``forget_keyword``; utility is
      ``model_utility`` when every plotted point has it, else ``retain_keyword``, so that
      all points share one axis.
    - ``attacks.png``, when ``attacks`` (`hf_cagul.evaluation.attacks.run_attacks`) has
      white-box rows: evasion rate and leak against the budget.
    - ``attention_heatmap.png``, when ``heatmap`` is given: the photo and the attention
      scores on the token grid side by side, the rewritten tokens boxed in red.

    A plot whose metrics are absent from every model is not written (nor linked).

    Returns:
        The written paths: ``report.md``, ``metrics.json``, then the plots.

    Raises:
        ValueError: if ``results`` is missing, empty or not a mapping of mappings, or
            ``heatmap`` is invalid (see `AttentionHeatmap.score_grid`); nothing is written.
    """
    results = _results(metrics)
    attention = attention_figure(heatmap) if heatmap is not None else None
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)

    plots: dict[str, Path] = {}
    accuracy = _accuracy_figure(results)
    if accuracy is not None:
        plots["accuracy"] = _save(accuracy, directory / "accuracy.png")
    leakage = _leakage_figure(results, metrics.get("ablation"))
    if leakage is not None:
        plots["leakage"] = _save(leakage, directory / "leakage_vs_utility.png")
    if attention is not None:
        plots["heatmap"] = _save(attention, directory / "attention_heatmap.png")
    attacks = _attacks_figure(metrics.get("attacks"))
    if attacks is not None:
        plots["attacks"] = _save(attacks, directory / "attacks.png")

    report = directory / "report.md"
    report.write_text(_markdown(metrics, results, plots), encoding="utf-8")
    metrics_json = directory / "metrics.json"
    text = json.dumps(_json_safe(metrics), indent=2, sort_keys=True, allow_nan=False)
    metrics_json.write_text(text + "\n", encoding="utf-8")
    return [report, metrics_json, *plots.values()]


def _results(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``metrics["results"]``, checked to be a non-empty mapping of model -> metrics."""
    results = metrics.get("results")
    if not isinstance(results, Mapping) or not results:
        raise ValueError(
            "metrics needs a non-empty 'results' section mapping each model name to its "
            f"metrics, got {results!r}."
        )
    for name, values in results.items():
        if not isinstance(values, Mapping):
            raise ValueError(
                f"metrics['results'][{name!r}] must map metric names to values, got {values!r}."
            )
    return dict(results)


def _json_safe(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------- markdown


def _markdown(
    metrics: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], plots: Mapping[str, Path]
) -> str:
    """The whole ``report.md``."""
    title = metrics.get("title")
    lines = [f"# {format_value(title) if title else 'hf_cagul report'}", ""]

    def section(heading: str, body: Iterable[str]) -> None:
        lines.extend([f"## {heading}", "", *body, ""])

    if "settings" in metrics:
        section("Settings", _generic(metrics["settings"], "setting"))
    if "stage1" in metrics:
        section("Stage 1: memorisation", _stage1(metrics["stage1"]))
    section("Results", [*_results_table(results), *_images(plots, "accuracy", "leakage")])
    if "targets" in metrics:
        section("Targets", _targets(metrics["targets"]))
    if "discriminator" in metrics:
        section("Discriminator", _discriminator(metrics["discriminator"]))
    if "robustness" in metrics:
        section("Robustness", _generic(metrics["robustness"], "probe"))
    if "attacks" in metrics:
        section("Attacks on the gate", [*_attacks(metrics["attacks"]), *_images(plots, "attacks")])
    if "ablation" in metrics:
        section("Ablation", _generic(metrics["ablation"], "variant"))
    if "comparison" in metrics:
        section("Comparison with fine-tuning baselines", comparison_markdown(metrics["comparison"]))
    if "timings" in metrics:
        section("Timings", _timings(metrics["timings"]))
    for key, value in metrics.items():
        if key not in _KNOWN_SECTIONS:
            section(key[:1].upper() + key[1:], _generic(value, "key"))
    if "heatmap" in plots:
        section(
            "Attention",
            [
                "Text->visual attention on one photo; the tokens the encoder "
                "rewrote are boxed in red.",
                *_images(plots, "heatmap"),
            ],
        )
    return "\n".join(lines).rstrip("\n") + "\n"


def _cell(value: Any) -> str:
    """A markdown table cell: `format_value` with pipes escaped and newlines flattened."""
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(_cell(cell) for cell in header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines.extend("| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows)
    return lines


def _union_keys(mappings: Iterable[Mapping[str, Any]]) -> list[str]:
    """All keys of ``mappings``, in order of first appearance."""
    return list(dict.fromkeys(key for mapping in mappings for key in mapping))


def _generic(value: Any, key_header: str) -> list[str]:
    """``value`` in the best shape its structure allows.

    A mapping of mappings is a table with one row per outer key and one column per inner
    key; another mapping a two-column table; a list of mappings a table with one row per
    item; anything else a line of text.
    """
    if isinstance(value, Mapping):
        if not value:
            return ["_(empty)_"]
        if all(isinstance(inner, Mapping) for inner in value.values()):
            columns = _union_keys(value.values())
            rows = [
                [name, *(inner.get(column) for column in columns)] for name, inner in value.items()
            ]
            return _table([key_header, *columns], rows)
        return _table([key_header, "value"], list(value.items()))
    if isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        columns = _union_keys(value)
        return _table(columns, [[item.get(column) for column in columns] for item in value])
    return [format_value(value)]


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparison rows (``method`` + `COMPARISON_COLUMNS` keys) as a markdown table."""
    return _table(
        ["method", *COMPARISON_COLUMNS.values()],
        [[row.get("method"), *(row.get(key) for key in COMPARISON_COLUMNS)] for row in rows],
    )


def _stage1(stage1: Any) -> list[str]:
    """Whether the stage-1 model memorised the forget set, then any other stage-1 keys."""
    if not isinstance(stage1, Mapping):
        return _generic(stage1, "key")
    accuracy, threshold = stage1.get("forget_keyword_accuracy"), stage1.get("threshold")
    memorised = stage1.get("memorised")
    if not isinstance(memorised, bool):
        measured, bar = _number(accuracy), _number(threshold)
        memorised = None if measured is None or bar is None else measured >= bar
    evidence = [
        f"{label} {format_value(value)}"
        for label, value in (("forget keyword accuracy", accuracy), ("threshold", threshold))
        if value is not None
    ]
    detail = f" ({', '.join(evidence)})" if evidence else ""
    if memorised is True:
        lines = [f"✅ The stage-1 model memorised the forget set{detail}."]
    elif memorised is False:
        lines = [
            '<span style="color:red">**WARNING:** the stage-1 model did NOT memorise the forget '
            f"set{detail}. There is little to forget, so the results below cannot show "
            "forgetting.</span>"
        ]
    else:
        lines = [
            "Memorisation not assessed: stage 1 gives neither `memorised` nor both "
            "`forget_keyword_accuracy` and `threshold`."
        ]
    extra = {key: value for key, value in stage1.items() if key not in _STAGE1_KEYS}
    return [*lines, "", *_generic(extra, "key")] if extra else lines


def _results_table(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per metric, one column per model."""
    models = list(results)
    rows = [
        [metric, *(results[model].get(metric) for model in models)]
        for metric in _union_keys(results.values())
    ]
    return _table(["metric", *models], rows)


def _targets(targets: Any) -> list[str]:
    """The targets table, ``met`` as ✅/❌, and how many were met."""
    if not (isinstance(targets, list) and all(isinstance(item, Mapping) for item in targets)):
        return _generic(targets, "target")
    rows = [
        {**target, "met": "✅" if target["met"] else '❌ <span style="color:red">MISSED</span>'}
        if isinstance(target.get("met"), bool)
        else target
        for target in targets
    ]
    verdicts = [target["met"] for target in targets if isinstance(target.get("met"), bool)]
    summary = f"**{sum(verdicts)} of {len(verdicts)} targets met.**"
    return [*_generic(rows, "target"), "", summary] if verdicts else _generic(rows, "target")


def _discriminator(gate: Any) -> list[str]:
    """The gate's metrics, each with what it measures (`GATE_METRICS`; blank for others)."""
    if not isinstance(gate, Mapping) or not gate:
        return _generic(gate, "metric")
    rows = [[key, value, GATE_METRICS.get(key, "")] for key, value in gate.items()]
    return _table(["metric", "value", "what it measures"], rows)


def _attacks(attacks: Any) -> list[str]:
    """The attacks table (`hf_cagul.evaluation.attacks.run_attacks`) and what it means."""
    if not isinstance(attacks, Mapping) or not isinstance(attacks.get("rows"), Mapping):
        return _generic(attacks, "key")
    half = attacks.get("white_box_half_budget")
    lines = [
        f"{format_value(attacks.get('photos'))} held-out photos of forget people; the evasion "
        "rate counts, of those the gate flags as they are, the share whose attacked photo it "
        "no longer flags; leak is the forget keyword accuracy of the served model on the "
        "attacked photos, base leak the bare model's on the same photos. White-box: "
        f"{format_value(attacks.get('steps'))} PGD steps on the gate's logit within an L-inf "
        "budget; black-box: random views until the answer is no refusal (answer) or the gate "
        "lets the view pass (gate, an upper bound).",
        "",
        *_generic(attacks["rows"], "attack"),
        "",
        "Smallest white-box budget at which more than half the flagged photos evade: "
        + (f"{half}/255." if half is not None else "none of those tried."),
    ]
    if attacks.get("white_box_skipped"):
        lines[-1] = f"No white-box attack: {format_value(attacks['white_box_skipped'])}"
    return lines


def _timings(timings: Any) -> list[str]:
    """Seconds per stage, with their total unless ``timings`` has a ``total`` already."""
    if not isinstance(timings, Mapping) or not timings:
        return _generic(timings, "stage")
    seconds = [_number(value) for value in timings.values()]
    rows = [
        [stage, format_value(value) if second is None else f"{second:.1f}"]
        for (stage, value), second in zip(timings.items(), seconds, strict=True)
    ]
    known = [second for second in seconds if second is not None]
    if len(known) > 1 and not any(str(stage).lower() == "total" for stage in timings):
        rows.append(["**total**", f"**{sum(known):.1f}**"])
    return _table(["stage", "seconds"], rows)


def _images(plots: Mapping[str, Path], *names: str) -> list[str]:
    """Markdown image links, relative to the report, for the written plots among ``names``."""
    alt = {
        "accuracy": "accuracy per model",
        "leakage": "leakage vs utility",
        "heatmap": "attention heatmap",
        "attacks": "evasion and leak against the white-box budget",
    }
    return [
        line
        for name in names
        if name in plots
        for line in ("", f"![{alt[name]}]({plots[name].name})")
    ]


# ---------------------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> Path:
    """Render ``figure`` to ``path`` as a PNG with the Agg canvas; return ``path``."""
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)
    return path


def _attacks_figure(attacks: Any) -> Figure | None:
    """Evasion rate and leak against the white-box budget, the black-box attacks as dashed
    levels; ``None`` without white-box rows."""
    rows = attacks.get("rows") if isinstance(attacks, Mapping) else None
    if not isinstance(rows, Mapping):
        return None
    white = [
        (values["budget"], values)
        for values in rows.values()
        if isinstance(values, Mapping) and isinstance(values.get("budget"), int)
    ]
    if not white:
        return None
    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    axes = figure.add_subplot()
    budgets = [budget for budget, _ in white]
    for key, color, label in (
        ("evasion_rate", "tab:red", "evasion rate"),
        ("leak", "tab:purple", "leak (served)"),
        ("base_leak", "tab:gray", "leak (bare model)"),
    ):
        values = [_number(row.get(key)) for _, row in white]
        axes.plot(
            budgets, [np.nan if v is None else v for v in values], "o-", color=color, label=label
        )
    for name, values in rows.items():
        evasion = _number(values.get("evasion_rate"))
        if name.startswith("black-box") and evasion is not None:
            axes.axhline(evasion, linestyle="--", linewidth=1, color="tab:blue", alpha=0.7)
            axes.annotate(f"{name}: evasion", (budgets[0], evasion), fontsize=7, color="tab:blue")
    axes.set_xscale("log", base=2)
    axes.set_xticks(budgets, [f"{b}/255" for b in budgets])
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("white-box L-inf budget")
    axes.set_ylabel("share of photos")
    axes.set_title("Attacks on the gate")
    axes.legend(fontsize=8)
    return figure


def _accuracy_figure(results: Mapping[str, Mapping[str, Any]]) -> Figure | None:
    """Grouped bars of the accuracy metrics per model, or ``None`` when there are none."""
    series = [
        (key, color)
        for key, color in _ACCURACY_SERIES
        if any(_number(values.get(key)) is not None for values in results.values())
    ]
    if not series:
        return None
    models = list(results)
    figure = Figure(figsize=(max(6.5, 1.6 * len(models) + 2.0), 4.5), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    positions = np.arange(len(models), dtype=float)
    highest = 1.0
    for index, (key, color) in enumerate(series):
        values = [_number(results[model].get(key)) for model in models]
        heights = [0.0 if value is None else value for value in values]
        highest = max(highest, *heights)
        offset = (index - (len(series) - 1) / 2) * width
        bars = axes.bar(positions + offset, heights, width, label=key, color=color)
        labels = [MISSING if value is None else f"{value:.2f}" for value in values]
        axes.bar_label(bars, labels=labels, fontsize=7, padding=1)
    axes.set_xticks(positions, models)
    axes.set_ylim(0.0, 1.12 * highest)
    axes.set_ylabel("accuracy")
    axes.set_title("Accuracy per model (forget: lower is better; retain: higher is better)")
    axes.yaxis.grid(True, alpha=0.3)
    axes.set_axisbelow(True)
    figure.legend(loc="outside lower center", ncols=min(len(series), 3), fontsize=8)
    return figure


def _leakage_figure(results: Mapping[str, Mapping[str, Any]], ablation: Any) -> Figure | None:
    """Leakage vs utility per model and ablation variant, or ``None`` without any point."""
    groups: list[tuple[str, Mapping[str, Any]]] = [("model", results)]
    if isinstance(ablation, Mapping):
        variants = {
            name: values for name, values in ablation.items() if isinstance(values, Mapping)
        }
        groups.append(("ablation", variants))
    # Held-out photos when every point has them: the training photos flatter the method.
    leakage = (
        "forget_heldout_keyword"
        if all(
            _number(values.get("forget_heldout_keyword")) is not None
            for _, members in groups
            for values in members.values()
            if _number(values.get("forget_keyword")) is not None
        )
        else "forget_keyword"
    )
    candidates = [
        (kind, name, values)
        for kind, members in groups
        for name, values in members.items()
        if _number(values.get(leakage)) is not None
    ]
    utility = (
        "model_utility"
        if candidates
        and all(_number(values.get("model_utility")) is not None for *_, values in candidates)
        else "retain_keyword"
    )
    points = [
        (kind, name, _number(values.get(leakage)), _number(values.get(utility)))
        for kind, name, values in candidates
    ]
    plotted = [(kind, name, x, y) for kind, name, x, y in points if x is not None and y is not None]
    if not plotted:
        return None

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(
        [0.0], [1.0], marker="*", s=260, color="gold", edgecolors="black", label="ideal", zorder=1
    )
    # Ablation variants are large hollow squares, so a model at the same spot shows inside.
    for index, (kind, name, x, y) in enumerate(plotted):
        color = f"C{index % 10}"
        if kind == "model":
            axes.scatter(
                [x], [y], marker="o", s=80, color=color, edgecolors="black", zorder=3, label=name
            )
        else:
            axes.scatter(
                [x],
                [y],
                marker="s",
                s=200,
                facecolors="none",
                edgecolors=color,
                linewidths=2.0,
                zorder=2,
                label=f"ablation: {name}",
            )
    values = [0.0, 1.0, *(x for *_, x, _ in plotted), *(y for *_, y in plotted)]
    axes.set_xlim(min(values) - 0.06, max(values) + 0.06)
    axes.set_ylim(min(values) - 0.06, max(values) + 0.06)
    axes.set_xlabel(f"leakage: {leakage} (lower is better)")
    axes.set_ylabel(f"utility: {utility} (higher is better)")
    axes.set_title("Leakage vs utility")
    axes.grid(True, alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=8, markerscale=0.6, labelspacing=0.9)
    return figure


def attention_figure(heatmap: AttentionHeatmap) -> Figure:
    """The figure of ``attention_heatmap.png``: the photo and the attention scores on the token
    grid side by side, the rewritten tokens boxed in red (drawn on the Agg canvas, no `pyplot`).

    Raises:
        ValueError: if ``heatmap`` is invalid (see `AttentionHeatmap.score_grid`).
    """
    return _heatmap_figure(heatmap, *heatmap.score_grid())


def _heatmap_figure(heatmap: AttentionHeatmap, grid: np.ndarray, selected: np.ndarray) -> Figure:
    """The photo and the attention grid side by side, rewritten tokens boxed in red."""
    side = grid.shape[0]
    extent = (0.0, float(side), float(side), 0.0)
    figure = Figure(figsize=(9.0, 4.6), layout="constrained")
    photo_axes, grid_axes = figure.subplots(1, 2)
    photo_axes.imshow(np.asarray(heatmap.image.convert("RGB")), extent=extent)
    photo_axes.set_title("photo (token grid)", fontsize=10)
    image = grid_axes.imshow(grid, cmap="viridis", extent=extent)
    grid_axes.set_title(f"attention scores ({side} x {side} tokens)", fontsize=10)
    figure.colorbar(image, ax=grid_axes, label="text→visual attention", shrink=0.9)
    linewidth = 2.0 if side <= 8 else 1.0
    for axes in (photo_axes, grid_axes):
        axes.set_xticks([])
        axes.set_yticks([])
        for line in range(1, side):
            axes.axhline(line, color="white", linewidth=0.4, alpha=0.4)
            axes.axvline(line, color="white", linewidth=0.4, alpha=0.4)
        for index in selected.tolist():
            row, column = divmod(index, side)
            axes.add_patch(
                Rectangle((column, row), 1, 1, fill=False, edgecolor="red", linewidth=linewidth)
            )
    figure.legend(
        handles=[Patch(fill=False, edgecolor="red", label=f"rewritten token ({selected.size})")],
        loc="outside lower center",
        fontsize=9,
    )
    figure.suptitle(heatmap.title or "Text→visual attention and rewritten tokens")
    return figure

"""The inspector's Gradio page (`build_app`) and its launcher (`launch_app`).

Gradio is the optional extra ``hf_cagul[app]``: it is imported when a page is built, never
when `hf_cagul` or `hf_cagul.app` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from hf_cagul.app.inspection import (
    attention_text,
    details_markdown,
    gate_markdown,
    inspect_photo,
    render_heatmap,
    robustness_markdown,
)
from hf_cagul.model import CagulModel

__all__ = ["DEFAULT_HOST", "build_app", "launch_app"]

DEFAULT_HOST = "127.0.0.1"
"""Where `launch_app` listens unless told otherwise: this machine only."""


def _gradio() -> Any:
    """The ``gradio`` module, or an error that says how to install it."""
    try:
        import gradio
    except ImportError as err:
        raise ImportError(
            "The adapter inspector needs Gradio: pip install 'hf_cagul[app]'."
        ) from err
    return gradio


def build_app(
    model: CagulModel,
    processor: Any,
    examples: Sequence[tuple[str | Path, str]] = (),
    metrics: Mapping[str, Any] | None = None,
    card: str | None = None,
    max_new_tokens: int = 16,
    title: str = "hf_cagul adapter inspector",
) -> Any:
    """The inspector page: a photo and a question in, the adapter at work out.

    The first tab shows side by side the base model's answer (adapter disabled) and the
    adapted model's, each active gate's probability and threshold, the attention scores over
    the visual-token grid with the rewritten tokens boxed in red (with the gate forced open,
    and said so, when no gate flags the photo), and the robustness verdicts of ``metrics``.
    The second tab lists each adapter's config, the fit summary and the model card's metrics.

    Args:
        model: The adapted VLM.
        processor: Its processor.
        examples: ``(photo path, question)`` pairs offered as examples (e.g. a demo's held-out
            photos, `DemoDirectory.examples`).
        metrics: A demo run's ``metrics.json`` (robustness verdicts, fit summary).
        card: The adapter's model card text (``README.md``).
        max_new_tokens: Tokens each greedy answer may have.
        title: Page title.

    Returns:
        The `gradio.Blocks` page (launch it with `launch_app`).
    """
    gr = _gradio()
    robustness = (metrics or {}).get("robustness")

    def inspect(image: Image.Image | None, question: str) -> tuple[Any, ...]:
        if image is None or not question.strip():
            raise gr.Error("Pick or upload a photo and type a question first.")
        result = inspect_photo(model, processor, image, question.strip(), max_new_tokens)
        heatmap = render_heatmap(result.heatmap) if result.heatmap is not None else None
        return (
            result.base_answer,
            result.adapted_answer,
            gate_markdown(result),
            heatmap,
            attention_text(result),
        )

    # A privacy tool: the page never reports its use to Gradio's analytics.
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}")
        with gr.Tab("Inspect"):
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(type="pil", label="Photo", sources=["upload"], elem_id="photo")
                    question = gr.Textbox(label="Question", elem_id="question")
                    run = gr.Button("Ask both models", variant="primary", elem_id="inspect")
                    if examples:
                        gr.Examples(
                            [[str(path), text] for path, text in examples],
                            inputs=[photo, question],
                            label="Held-out photos",
                        )
                with gr.Column():
                    with gr.Row():
                        base = gr.Textbox(
                            label="Base model (adapter disabled)", elem_id="base-answer"
                        )
                        adapted = gr.Textbox(label="With the adapter", elem_id="adapted-answer")
                    gates = gr.Markdown(elem_id="gates")
            heatmap = gr.Image(
                type="pil", label="Attention over the visual tokens", elem_id="heatmap"
            )
            numbers = gr.Textbox(
                label="Attention scores (row-major token grid)", lines=4, elem_id="attention"
            )
            if robustness:
                gr.Markdown("## Robustness probes (demo run)\n\n" + robustness_markdown(robustness))
            run.click(
                inspect,
                inputs=[photo, question],
                outputs=[base, adapted, gates, heatmap, numbers],
            )
        with gr.Tab("Adapter"):
            gr.Markdown(details_markdown(model, metrics, card), elem_id="details")
    return page


def launch_app(
    page: Any, host: str | None = None, port: int | None = None, block: bool = True
) -> Any:
    """Serve ``page``.

    Args:
        page: A page from `build_app`.
        host: Address to listen on (default: `DEFAULT_HOST`, this machine only; ``0.0.0.0``
            to serve the network, as a Space does).
        port: Port (default: Gradio's, ``GRADIO_SERVER_PORT`` or 7860).
        block: Serve until interrupted; ``False`` returns once the server is up.

    Returns:
        What `gradio.Blocks.launch` returns (the app, its local URL and share URL).
    """
    return page.launch(
        server_name=host or DEFAULT_HOST,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=True,
    )

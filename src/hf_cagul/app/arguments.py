"""What ``hf-cagul app`` takes (`AppArguments`), and `run_app`, which loads and serves it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cagul.app.demo_dir import DemoDirectory
from hf_cagul.model import CagulModel
from hf_cagul.persistence import CARD_NAME

__all__ = ["AppArguments", "build_from_arguments", "run_app"]


@dataclass
class AppArguments:
    """Inputs of the adapter inspector.

    Args:
        model: Base VLM directory or Hub id (with ``adapter``).
        adapter: Adapter directory or Hub id.
        demo_dir: An ``hf-cagul demo`` output directory: its stage-1 VLM, processor, adapter,
            held-out photos and metrics (instead of ``model`` and ``adapter``).
        host: Address to listen on (default ``127.0.0.1``, this machine only).
        port: Port to listen on (default: Gradio's, 7860).
        device: Where the VLM goes (``auto``: the first GPU if any, else the CPU).
        max_new_tokens: Tokens each greedy answer may have.
    """

    model: str | None = field(
        default=None, metadata={"help": "Base VLM directory or Hub id (with --adapter)."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "Adapter directory or Hub id (with --model)."}
    )
    demo_dir: str | None = field(
        default=None,
        metadata={
            "help": "An `hf-cagul demo` output directory: its stage-1 VLM, adapter, held-out "
            "photos and metrics (instead of --model and --adapter)."
        },
    )
    host: str | None = field(
        default=None,
        metadata={"help": "Address to listen on (default 127.0.0.1: this machine only)."},
    )
    port: int | None = field(
        default=None, metadata={"help": "Port to listen on (default: Gradio's, 7860)."}
    )
    device: str = field(
        default="auto",
        metadata={"help": "Where the VLM goes (auto: the first GPU if any, else the CPU)."},
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "Tokens each greedy answer may have."}
    )

    def __post_init__(self) -> None:
        if self.demo_dir is not None and (self.model is not None or self.adapter is not None):
            raise ValueError(
                "Pass either --demo-dir or --model with --adapter, not both: a demo directory "
                "brings its own model and adapter."
            )
        if self.demo_dir is None and (self.model is None or self.adapter is None):
            raise ValueError(
                "The app needs a model and an adapter: pass --model M --adapter A, or "
                "--demo-dir DIR (an `hf-cagul demo` output directory)."
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1.")


def _adapter_card(adapter: str) -> str | None:
    """The adapter's model card: ``README.md`` of its directory, else of its Hub repo (``None``
    when it has none or the Hub cannot be reached)."""
    local = Path(adapter) / CARD_NAME
    if Path(adapter).is_dir():
        return local.read_text(encoding="utf-8") if local.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(hf_hub_download(adapter, CARD_NAME)).read_text(encoding="utf-8")
    except (OSError, HfHubHTTPError):
        # The card only adds metrics to the details tab: the app works without it.
        return None


def build_from_arguments(args: AppArguments) -> Any:
    """Load what ``args`` name and build the inspector page (`build_app`).

    With ``demo_dir``: the stage-1 VLM and processor from ``<demo_dir>/stage1``, the adapter
    from ``<demo_dir>/adapter``, examples and metrics from the run. Otherwise ``model`` is
    loaded as ``hf-cagul`` loads a model (`hf_cagul.cli.load_vlm`) and ``adapter`` onto it.
    """
    from hf_cagul.app.ui import build_app
    from hf_cagul.cli import load_vlm

    examples: list[tuple[Path, str]] = []
    metrics = None
    if args.demo_dir is not None:
        demo = DemoDirectory(Path(args.demo_dir))
        demo.check()
        model_path, adapter = str(demo.stage1), str(demo.adapter)
        examples, metrics = demo.examples(), demo.metrics()
    else:
        assert args.model is not None and args.adapter is not None  # see __post_init__
        model_path, adapter = args.model, args.adapter
    vlm, processor = load_vlm(model_path, device=args.device)
    model = CagulModel.from_pretrained(vlm, adapter)
    return build_app(
        model,
        processor,
        examples=[(str(path), question) for path, question in examples],
        metrics=metrics,
        card=_adapter_card(adapter),
        max_new_tokens=args.max_new_tokens,
    )


def run_app(args: AppArguments) -> None:
    """Load what ``args`` name and serve the inspector until interrupted."""
    from hf_cagul.app.ui import launch_app

    launch_app(build_from_arguments(args), args.host, args.port)

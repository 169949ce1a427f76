"""Shared pytest fixtures."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_server import FakeHub, use_fake_hub
from vlm_inputs import randomise_encoder

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.tiny import tiny_vlm


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running in-process `FakeHub`, with `huggingface_hub` pointed at it.

    `HF_ENDPOINT`, a fresh `HF_HOME` / `HF_HUB_CACHE` under `tmp_path`, `HF_TOKEN` (=
    `fake_hub.token`), online mode and Xet disabled are set both in the environment and
    in `huggingface_hub.constants` (see `hub_server.use_fake_hub`); all restored afterwards.
    """
    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub, tmp_path / "hf_home")
        yield hub
        assert not hub.errors, "FakeHub crashed:\n" + "\n".join(hub.errors)


@pytest.fixture
def saved_adapter(tmp_path: Path) -> tuple[CagulModel, Any, Path]:
    """``(model, processor, directory)``: a tiny LLaVA adapter with a random encoder, saved to
    ``tmp_path / "adapter"`` (``model.unload()`` gives the VLM back, to load it into)."""
    vlm, processor = tiny_vlm("llava")
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model, seed=1)
    model.save_pretrained(tmp_path / "adapter")
    return model, processor, tmp_path / "adapter"

"""Shared pytest fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub, use_fake_hub


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

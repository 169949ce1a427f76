"""The adapter inspector (``hf_cagul.app``) without a browser: inputs, what it computes, the
launcher, the Space entry point and the model card's link. The page itself is driven in a
real browser in ``test_app_browser.py``."""

from __future__ import annotations

import importlib.util
import runpy
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from app_demo import (
    CARD_METRICS,
    FIT,
    QUESTION,
    expected,
    load_demo_model,
    make_demo_dir,
)
from transformers import HfArgumentParser
from vlm_inputs import image, randomise_encoder

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.app import AppArguments, DemoDirectory, inspect_photo
from hf_cagul.app.inspection import details_markdown, robustness_markdown
from hf_cagul.evaluation.report import format_value
from hf_cagul.persistence import APP_GUIDE_URL
from hf_cagul.tiny import tiny_vlm

REPOSITORY = Path(__file__).resolve().parents[1]
requires_gradio = pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None,
    reason="Gradio is not installed: pip install 'hf_cagul[app]' (scripts/bootstrap.sh does).",
)


def free_port() -> int:
    """A TCP port nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoDirectory:
    return make_demo_dir(tmp_path_factory.mktemp("demo"))


def test_the_library_never_imports_gradio() -> None:
    # In a fresh interpreter: every module, hf_cagul.app included, imports without pulling in
    # Gradio; with Gradio unavailable, building a page says how to install it.
    script = """
import importlib, pkgutil, sys
import hf_cagul
names = [m.name for m in pkgutil.walk_packages(hf_cagul.__path__, "hf_cagul.")]
for name in names:
    importlib.import_module(name)
assert "hf_cagul.app.ui" in names, names
leaked = sorted(m for m in sys.modules if m == "gradio" or m.startswith("gradio."))
assert not leaked, leaked
sys.modules["gradio"] = None  # what an environment without the extra sees
from hf_cagul.app import build_app
try:
    build_app(None, None)
except ImportError as err:
    assert "pip install 'hf_cagul[app]'" in str(err), err
else:
    raise AssertionError("build_app worked without Gradio")
print("ok", len(names))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_arguments_parse_as_the_cli_spells_them() -> None:
    parser = HfArgumentParser(AppArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--model", "org/vlm", "--adapter", "org/adapter", "--host", "0.0.0.0", "--port", "8000"]
    )
    assert (args.model, args.adapter, args.host, args.port) == (
        "org/vlm",
        "org/adapter",
        "0.0.0.0",
        8000,
    )
    (args,) = parser.parse_args_into_dataclasses(["--demo-dir", "cagul-demo"])
    assert (args.demo_dir, args.host, args.port) == ("cagul-demo", None, None)
    assert all(field.metadata.get("help") for field in AppArguments.__dataclass_fields__.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "--model M --adapter A, or --demo-dir"),
        ({"model": "org/vlm"}, "--model M --adapter A, or --demo-dir"),
        ({"demo_dir": "d", "model": "org/vlm"}, "not both"),
        ({"demo_dir": "d", "max_new_tokens": 0}, "at least 1"),
    ],
)
def test_arguments_refuse_what_cannot_run(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AppArguments(**kwargs)


def test_demo_directory_keeps_photos_exact_and_names_what_is_missing(tmp_path) -> None:
    directory = DemoDirectory(tmp_path)
    assert directory.examples() == [] and directory.metrics() is None
    with pytest.raises(FileNotFoundError, match=r"stage1.*adapter.*hf-cagul demo"):
        directory.check()
    photos = [image(5), image(6)]
    paths = directory.save_examples(photos, ["a ?", "b ?"])
    loaded = directory.examples()
    assert loaded == [(paths[0], "a ?"), (paths[1], "b ?")]
    from PIL import Image

    for photo, (path, _) in zip(photos, loaded, strict=True):
        assert Image.open(path).tobytes() == photo.tobytes()
    with pytest.raises(ValueError, match="2 photos but 1 questions"):
        directory.save_examples(photos, ["a ?"])


def test_inspection_of_a_flagged_photo_is_what_the_library_gives(demo) -> None:
    model, processor = load_demo_model(demo)
    photo = image(1)
    truth = expected(model, processor, photo, forced=False)
    result = inspect_photo(model, processor, photo, QUESTION)
    assert result.base_answer == truth.base_answer
    assert result.adapted_answer == truth.adapted_answer
    assert result.base_answer != result.adapted_answer  # the rewrite shows in the answer
    assert [(g.adapter, g.threshold, g.flagged) for g in result.gates] == [("default", 0.5, True)]
    assert result.gates[0].probability == pytest.approx(truth.probability)
    assert result.flagged and not result.forced
    assert result.heatmap is not None
    assert list(result.heatmap.selected) == truth.selected
    assert list(result.heatmap.scores) == pytest.approx(truth.scores)


def test_an_unflagged_photo_shows_the_forced_heatmap_and_says_so(demo) -> None:
    model, processor = load_demo_model(demo)
    model.active_config.gate_threshold = 0.999  # above the gate's sigmoid(4) = 0.982
    photo = image(2)
    truth = expected(model, processor, photo, forced=True)
    result = inspect_photo(model, processor, photo, QUESTION)
    assert not result.flagged and result.forced
    assert result.adapted_answer == result.base_answer == truth.base_answer
    assert result.heatmap is not None and "forced" in result.heatmap.title
    assert list(result.heatmap.selected) == truth.selected
    assert list(result.heatmap.scores) == pytest.approx(truth.scores)


def test_details_show_config_fit_and_card_metrics(demo) -> None:
    model, _ = load_demo_model(demo)
    card = (demo.adapter / "README.md").read_text()
    details = details_markdown(model, demo.metrics(), card)
    for name, value in CARD_METRICS.items():
        assert f"| {name} | {value:.4g} |" in details
    for name, value in FIT.items():
        assert f"| {name} | {format_value(value)} |" in details
    assert "| fit seconds | 12.500 |" in details
    assert f"| gate_threshold | {format_value(0.5)} |" in details
    assert "| family | llava |" in details
    bare = details_markdown(model)
    assert "No fit summary" in bare and "no evaluation table" in bare


def test_robustness_verdicts_compare_the_adapter_with_the_base(demo) -> None:
    table = robustness_markdown(demo.metrics()["robustness"])
    assert "| blur on photo | 0.750 | 0.250 | forgets |" in table
    assert "| text-only questions (no photo) | 0.500 | 0.500 | does not forget |" in table
    assert "| paraphrased questions | 0.000 | 0.000 | nothing to forget |" in table


@requires_gradio
def test_launcher_serves_this_machine_only_unless_told(demo) -> None:
    from hf_cagul.app import DEFAULT_HOST, build_from_arguments, launch_app

    page = build_from_arguments(AppArguments(demo_dir=str(demo.root)))
    port = free_port()
    launch_app(page, port=port, block=False)
    try:
        assert (page.server_name, page.server_port) == (DEFAULT_HOST, port) == ("127.0.0.1", port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
    finally:
        page.close()
    launch_app(page, block=False)
    try:
        assert 7860 <= page.server_port < 7960  # Gradio's default port, or its next free one
    finally:
        page.close()


@requires_gradio
def test_space_entry_point_builds_from_environment(demo, monkeypatch) -> None:
    import gradio as gr

    monkeypatch.setenv("CAGUL_BASE_MODEL", str(demo.stage1))
    monkeypatch.setenv("CAGUL_ADAPTER", str(demo.adapter))
    namespace = runpy.run_path(str(REPOSITORY / "app.py"))
    page = namespace["demo"]
    assert isinstance(page, gr.Blocks)
    markdown = [
        block.value
        for block in page.blocks.values()
        if getattr(block, "elem_id", None) == "details"
    ]
    # The card's metrics show: the adapter the environment names is the one loaded.
    assert len(markdown) == 1 and "| forget keyword accuracy | 0.125 |" in markdown[0]


def test_model_card_links_to_the_app(fake_hub) -> None:
    repo = "test-user/forget-adapter"
    vlm, _ = tiny_vlm("llava")
    vlm.config._name_or_path = "test-user/tiny-llava"
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    model.push_to_hub(repo)
    card = fake_hub.files(repo)["README.md"].decode()
    assert f"({APP_GUIDE_URL})" in card
    assert f"hf-cagul app --model test-user/tiny-llava --adapter {repo}" in card
    # The link points at this repository's own guide.
    assert APP_GUIDE_URL.endswith("/blob/main/docs/app.md")
    assert (REPOSITORY / "docs" / "app.md").is_file()

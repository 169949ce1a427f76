"""An untrusted adapter cannot take the process down: each damaged, lying or absurd adapter is
refused with a clear error, in bounded memory and time, before anything is allocated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from vlm_inputs import assert_identical, snapshot

from hf_cagul import CagulModel
from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME
from hf_cagul.tiny import tiny_vlm

TESTS = Path(__file__).resolve().parent
MAX_SECONDS = 2.0
MAX_GROWTH_MIB = 100.0


def edit_config(**changes: Any) -> Callable[[Path], None]:
    """A corruption: set fields of the adapter's config."""

    def corrupt(directory: Path) -> None:
        path = directory / CONFIG_NAME
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))

    return corrupt


def config_bytes(data: bytes) -> Callable[[Path], None]:
    """A corruption: replace the config file with ``data``."""
    return lambda directory: (directory / CONFIG_NAME).write_bytes(data)


def edit_tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    """A corruption: re-save the weights after ``edit`` changed them (a well-formed file)."""

    def corrupt(directory: Path) -> None:
        tensors = load_file(directory / WEIGHTS_NAME)
        edit(tensors)
        save_file(tensors, directory / WEIGHTS_NAME)

    return corrupt


def edit_header(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A corruption: rewrite the weights' safetensors header after ``edit`` changed it, with
    the tensors' bytes left as they were."""

    def corrupt(directory: Path) -> None:
        header, data = split_weights(directory / WEIGHTS_NAME)
        edit(header)
        encoded = json.dumps(header).encode()
        (directory / WEIGHTS_NAME).write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)

    return corrupt


def edit_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A corruption: replace the weights file's bytes by ``edit`` of them."""

    def corrupt(directory: Path) -> None:
        path = directory / WEIGHTS_NAME
        path.write_bytes(edit(path.read_bytes()))

    return corrupt


def split_weights(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header and the tensors' bytes that follow it."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def with_length(length: int) -> Callable[[bytes], bytes]:
    """A weights file whose first 8 bytes claim a header of ``length`` bytes."""
    return lambda raw: length.to_bytes(8, "little") + raw[8:]


def rename(header: dict[str, Any], name: str) -> None:
    """Give the encoder's first weight another name in ``header``."""
    header[name] = header.pop("encoder.mlp.0.weight")


def duplicate_key(raw: bytes) -> bytes:
    """The header with its first tensor's record given twice (JSON parsers keep the last)."""
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    name = next(key for key in header if key != "__metadata__")
    record = json.dumps({name: header[name]})[1:-1]
    encoded = ("{" + record + ", " + json.dumps(header)[1:]).encode()
    return len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :]


def set_value(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    """An edit of the tensors: the first value of ``name`` becomes ``value``."""

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name].view(-1)[0] = value

    return edit


def set_entry(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of the header: field ``key`` of tensor ``name``'s record becomes ``value``."""

    def edit(header: dict[str, Any]) -> None:
        header[name][key] = value

    return edit


MLP_IN = "encoder.mlp.0.weight"  # (encoder_hidden_size, 2 * hidden_size) = (256, 128)
NORM = "discriminator.norm.weight"  # (hidden_size,) = (64,)

CASES = [
    # -- sizes in the config: absurd, or disagreeing with the weights
    pytest.param(
        edit_config(encoder_hidden_size=6_000_000),
        r"encoder_hidden_size=6000000 is absurd .*at most 4,096",
        id="encoder-6e6",
    ),
    pytest.param(
        edit_config(gate_members=10**6),
        r"gate_members=1000000 must lie in 1\.\.16",
        id="gate-members-1e6",
    ),
    pytest.param(
        edit_config(gate_members=3),
        r"discriminator\.members\.0\.norm\.weight",
        id="gate-members-without-their-weights",
    ),
    pytest.param(
        edit_config(encoder_hidden_size=10**12),
        r"encoder_hidden_size=1000000000000 is absurd",
        id="encoder-1e12",
    ),
    pytest.param(
        edit_config(discriminator_hidden_size=10**30),
        r"discriminator_hidden_size=10{30} is absurd",
        id="discriminator-1e30",
    ),
    pytest.param(
        edit_config(hidden_size=10**7), r"hidden_size=10000000 is absurd", id="hidden-1e7"
    ),
    pytest.param(edit_config(hidden_size=0), r"hidden_size=0 is absurd", id="hidden-0"),
    pytest.param(
        edit_config(hidden_size=65536, encoder_hidden_size=2**20, discriminator_hidden_size=2**20),
        r"[\d,]+ parameters \(from hidden_size=65536, .*\) is absurd .*at most 268,435,456",
        id="parameter-count",
    ),
    pytest.param(
        edit_config(encoder_hidden_size=512),
        rf"'{MLP_IN}' has shape \[256, 128\] but the config implies \[512, 128\] \(set by "
        r"hidden_size, encoder_hidden_size\).*Set encoder_hidden_size in cagul_config\.json",
        id="encoder-disagrees",
    ),
    pytest.param(
        edit_config(hidden_size=128),
        rf"'{NORM}' has shape \[64\] but the config implies \[128\].*Set hidden_size in",
        id="hidden-disagrees",
    ),
    pytest.param(edit_config(gate="nope"), r"Unknown gate 'nope'", id="unknown-gate"),
    # -- the config: types and JSON
    pytest.param(
        edit_config(encoder_hidden_size="256"),
        r"encoder_hidden_size must be int, got str '256'",
        id="type-str",
    ),
    pytest.param(
        edit_config(encoder_hidden_size=256.5),
        r"encoder_hidden_size must be int, got float",
        id="type-float",
    ),
    pytest.param(
        edit_config(hidden_size=True), r"hidden_size must be int \| None, got bool", id="type-bool"
    ),
    pytest.param(edit_config(gate=5), r"gate must be str, got int", id="type-gate"),
    pytest.param(
        edit_config(gate_calibration=[1]), r"gate_calibration must be dict", id="type-dict"
    ),
    pytest.param(config_bytes(b"{not json"), r"not valid JSON", id="config-not-json"),
    pytest.param(config_bytes(b"[1, 2]"), r"must be a JSON object", id="config-not-object"),
    pytest.param(config_bytes(b"[" * 100_000), r"not valid JSON", id="config-too-deep"),
    pytest.param(config_bytes(b"\xff\xfe{}"), r"not valid JSON", id="config-not-utf8"),
    pytest.param(
        config_bytes(b'{"encoder_hidden_size": 1' + b"0" * 10_000 + b"}"),
        r"not valid JSON",
        id="config-10000-digits",
    ),
    pytest.param(config_bytes(b" " * (2 << 20)), r"too large", id="config-too-large"),
    # -- the weights' values and set of tensors
    pytest.param(
        edit_tensors(lambda tensors: tensors.update({MLP_IN: tensors[MLP_IN].long()})),
        rf"'{MLP_IN}' has dtype I64; an adapter's weights are floating-point",
        id="dtype-int64",
    ),
    pytest.param(
        edit_tensors(lambda tensors: tensors.update({NORM: tensors[NORM] > 0})),
        rf"'{NORM}' has dtype BOOL",
        id="dtype-bool",
    ),
    pytest.param(
        edit_tensors(lambda tensors: tensors.pop("encoder.mlp.2.bias")),
        r"missing from the weights: \['encoder\.mlp\.2\.bias'\]",
        id="missing-tensor",
    ),
    pytest.param(
        edit_tensors(lambda tensors: tensors.update({"encoder.extra": torch.zeros(3)})),
        r"the config does not have: \['encoder\.extra'\]",
        id="extra-tensor",
    ),
    pytest.param(
        edit_tensors(set_value("encoder.mlp.2.weight", float("nan"))),
        r"'encoder\.mlp\.2\.weight' holds 1 NaN or infinite values",
        id="nan",
    ),
    pytest.param(
        edit_tensors(set_value("discriminator.head.bias", float("-inf"))),
        r"'discriminator\.head\.bias' holds 1 NaN or infinite values",
        id="inf",
    ),
    # -- the weights file: a header that lies, odd names, truncation
    pytest.param(edit_bytes(lambda raw: b""), r"0 bytes long, too short", id="empty"),
    pytest.param(
        edit_bytes(lambda raw: raw[:20]), r"header claims [\d,]+ bytes but", id="cut-in-header"
    ),
    pytest.param(
        edit_bytes(lambda raw: raw[:-100]),
        r"tensors need [\d,]+ bytes of data but the file holds",
        id="truncated",
    ),
    pytest.param(
        edit_bytes(lambda raw: raw + b"\x00" * 64),
        r"tensors need [\d,]+ bytes of data but the file holds",
        id="trailing-bytes",
    ),
    pytest.param(
        edit_bytes(lambda raw: with_length(len(raw))(raw)),
        r"header claims [\d,]+ bytes but the file has",
        id="header-longer-than-file",
    ),
    pytest.param(
        edit_bytes(with_length(2**62)),
        r"header claims [\d,]+ bytes \(at most 1,048,576 accepted\)",
        id="header-absurdly-long",
    ),
    pytest.param(
        edit_bytes(lambda raw: raw[:8] + b"{" + b" " * (int.from_bytes(raw[:8], "little") - 1)),
        r"header is not valid JSON",
        id="header-not-json",
    ),
    pytest.param(edit_bytes(duplicate_key), r"appears twice", id="header-duplicate-key"),
    pytest.param(
        edit_header(lambda header: rename(header, "../../etc/passwd")),
        r"tensor name '\.\./\.\./etc/passwd' is not a module path",
        id="name-parent-path",
    ),
    pytest.param(
        edit_header(lambda header: rename(header, "encoder/mlp.0.weight")),
        r"'encoder/mlp\.0\.weight' is not a module path",
        id="name-slash",
    ),
    pytest.param(
        edit_header(lambda header: rename(header, "encoder.mlp.0.weight\x00")),
        r"is not a module path",
        id="name-nul",
    ),
    pytest.param(
        edit_header(set_entry(MLP_IN, "shape", [6_000_000, 128])),
        rf"'{MLP_IN}' of shape \[6000000, 128\] and dtype F32 needs [\d,]+ bytes but its "
        r"data_offsets span 131,072",
        id="shape-lies",
    ),
    pytest.param(
        edit_header(set_entry(MLP_IN, "shape", [-256, -128])),
        r"has shape \[-256, -128\], not a list of sizes",
        id="shape-negative",
    ),
    pytest.param(
        edit_header(set_entry(MLP_IN, "data_offsets", [0, 131072])),
        r"overlapping or with a gap",
        id="offsets-overlap",
    ),
    pytest.param(
        edit_header(lambda header: header.update({"__metadata__": {"format": 1}})),
        r"__metadata__ is not a mapping of strings",
        id="metadata-not-strings",
    ),
]


@pytest.mark.parametrize(("corrupt", "message"), CASES)
def test_a_fuzzed_adapter_is_refused_clearly_and_leaves_the_model_as_it_was(
    saved_adapter, corrupt, message
) -> None:
    _, _, directory = saved_adapter
    corrupt(directory)
    vlm, _ = tiny_vlm("llava")
    before = snapshot(vlm)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        CagulModel.from_pretrained(vlm, directory)
    assert time.perf_counter() - start < MAX_SECONDS
    assert all(p.requires_grad for p in vlm.parameters())  # nothing frozen
    assert not vlm._forward_pre_hooks and not vlm._forward_hooks
    assert_identical(before, vlm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_an_honest_adapter_in_another_float_dtype_still_loads(saved_adapter, dtype) -> None:
    model, _, directory = saved_adapter
    edit_tensors(lambda tensors: tensors.update({k: v.to(dtype) for k, v in tensors.items()}))(
        directory
    )
    loaded = CagulModel.from_pretrained(model.unload(), directory)
    expected = model.active_adapter_module.state_dict()
    for name, tensor in loaded.active_adapter_module.state_dict().items():
        assert torch.equal(tensor, expected[name].to(dtype).float()), name


def test_an_error_names_the_tensor_the_shapes_and_the_field(saved_adapter) -> None:
    _, _, directory = saved_adapter
    edit_config(discriminator_hidden_size=128)(directory)
    with pytest.raises(ValueError) as refused:
        CagulModel.from_pretrained(tiny_vlm("llava")[0], directory)
    message = str(refused.value)
    assert str(directory / WEIGHTS_NAME) in message
    for expected in (
        "'discriminator.token_mlp.0.weight' has shape [256, 64]",
        "the config implies [128, 64] (set by hidden_size, discriminator_hidden_size)",
        "'discriminator.head.weight' has shape [1, 512]",
        "Set discriminator_hidden_size in cagul_config.json",
    ):
        assert expected in message
    assert "encoder." not in message  # the encoder's tensors agree with the config


def test_every_fuzzed_adapter_loads_in_bounded_memory_and_time(saved_adapter, tmp_path) -> None:
    """Measured in a fresh process: pytest's own peak memory would hide a load's."""
    _, _, honest = saved_adapter
    fuzzed = []
    for case in CASES:
        directory = tmp_path / "fuzzed" / str(case.id)
        shutil.copytree(honest, directory)
        case.values[0](directory)
        fuzzed.append(directory)
    probe = subprocess.run(
        [sys.executable, str(TESTS / "adapter_load_probe.py"), str(honest), *map(str, fuzzed)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    loads = json.loads(probe.stdout)["loads"]
    assert len(loads) == len(CASES)
    for case, outcome in zip(CASES, loads, strict=True):
        assert outcome["error"] == "ValueError", (case.id, outcome)
        assert outcome["seconds"] < MAX_SECONDS, (case.id, outcome["seconds"])
        assert outcome["peak_growth_mib"] < MAX_GROWTH_MIB, (case.id, outcome)

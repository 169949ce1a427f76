"""CagulConfig: defaults, validation, and the cagul_config.json round trip."""

from __future__ import annotations

import json

import pytest

from hf_cagul import CagulConfig
from hf_cagul.config import CONFIG_NAME


def bound_config(**overrides: object) -> CagulConfig:
    values: dict[str, object] = {
        "family": "llava",
        "hidden_size": 64,
        "image_token_id": 7,
        "num_hidden_layers": 8,
    }
    values.update(overrides)
    return CagulConfig(**values)  # type: ignore[arg-type]


def test_defaults_resolve_layer_and_token_count() -> None:
    config = bound_config()
    assert config.resolved_attention_layer == 2
    assert config.num_selected(16) == 8
    assert config.num_selected(1) == 1
    assert bound_config(num_tokens=5).num_selected(16) == 5
    assert bound_config(num_tokens=50).num_selected(16) == 16
    assert bound_config(attention_layer=7).resolved_attention_layer == 7


def test_unbound_config_cannot_resolve_layer() -> None:
    with pytest.raises(ValueError, match="not been bound"):
        _ = CagulConfig().resolved_attention_layer


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("token_ratio", 0.0, "token_ratio"),
        ("token_ratio", 1.5, "token_ratio"),
        ("num_tokens", 0, "num_tokens"),
        ("gate_threshold", 1.0, "gate_threshold"),
        ("query_tokens", "answer", "query_tokens"),
        ("encoder_hidden_size", 0, "encoder_hidden_size"),
        ("attention_layer", 8, "does not exist"),
        ("attention_layer", -1, "attention_layer"),
    ],
)
def test_invalid_fields_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bound_config(**{field: value})


def test_json_round_trip(tmp_path) -> None:
    config = bound_config(token_ratio=0.25, attention_layer=3)
    path = config.save(tmp_path)
    assert path.endswith(CONFIG_NAME)
    assert CagulConfig.from_json_file(path) == config


def test_unknown_keys_from_a_newer_version_are_refused(tmp_path) -> None:
    data = bound_config().to_dict() | {"future_option": 3, "cagul_version": "9.0.0"}
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"future_option.*9\.0\.0.*pip install -U"):
        CagulConfig.from_json_file(path)


def test_saved_config_missing_model_fields_is_refused(tmp_path) -> None:
    data = bound_config().to_dict()
    del data["hidden_size"]
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['hidden_size'\]"):
        CagulConfig.from_json_file(path)


def test_wrongly_typed_and_malformed_files_are_refused(tmp_path) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps(bound_config().to_dict() | {"token_ratio": "half"}))
    with pytest.raises(ValueError, match=r"Invalid cagul_config\.json"):
        CagulConfig.from_json_file(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CagulConfig.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        CagulConfig.from_json_file(path)


def test_every_field_is_documented() -> None:
    import dataclasses

    for config_field in dataclasses.fields(CagulConfig):
        assert config_field.metadata.get("help"), config_field.name


@pytest.mark.parametrize("name", ["activation_checkpointing", "gradient_checkpointing"])
def test_checkpointing_is_non_reentrant_under_either_name(name, tmp_path) -> None:
    from hf_cagul import CagulTrainingConfig

    args = CagulTrainingConfig(output_dir=str(tmp_path), **{name: True})
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}

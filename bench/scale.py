"""Size of a CAGUL adapter against the VLMs people serve, built on the meta device.

Each VLM is built from its published configuration (the values of ``config.json`` on the Hub,
written out here: nothing is downloaded) on PyTorch's meta device, so no weight is allocated;
the CAGUL adapter is the one `get_cagul_model` would attach with the default `CagulConfig`:
its size follows from the language model's hidden size, which `hf_cagul.families` reads from
the configuration. Prints both parameter counts and their ratio; the target is < 0.5 %.

    python bench/scale.py
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    Idefics3Config,
    LlavaConfig,
    PretrainedConfig,
    Qwen2VLConfig,
)

from hf_cagul import CagulConfig
from hf_cagul.families import detect_family
from hf_cagul.modules import CagulAdapter

TARGET = 0.005

LLAMA2_7B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
CLIP_L_336: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
LLAMA31_8B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128259,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
}
SIGLIP_SO400M_364: dict[str, Any] = {
    "model_type": "idefics3_vision",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 364,
    "patch_size": 14,
}


def published_configs() -> dict[str, PretrainedConfig]:
    """The configurations of LLaVA-1.5-7B, Qwen2-VL-7B and Idefics3-8B."""
    return {
        "llava-hf/llava-1.5-7b-hf": LlavaConfig(
            text_config=LLAMA2_7B, vision_config=CLIP_L_336, image_token_index=32000
        ),
        "Qwen/Qwen2-VL-7B-Instruct": Qwen2VLConfig(
            text_config={
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "max_position_embeddings": 32768,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                "tie_word_embeddings": False,
            },
            vision_config={
                "depth": 32,
                "embed_dim": 1280,
                "hidden_size": 3584,
                "mlp_ratio": 4,
                "num_heads": 16,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            image_token_id=151655,
        ),
        "HuggingFaceM4/Idefics3-8B-Llama3": Idefics3Config(
            text_config=LLAMA31_8B,
            vision_config=SIGLIP_SO400M_364,
            scale_factor=2,
            image_token_id=128257,
        ),
    }


def count(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(parameter.numel() for parameter in module.parameters())


def main() -> None:
    """Print the adapter's share of each VLM."""
    defaults = CagulConfig()
    print(f"{'model':<36}{'VLM params':>16}{'CAGUL params':>15}{'ratio':>10}  target < 0.5%")
    for name, config in published_configs().items():
        with torch.device("meta"):
            vlm = AutoModelForImageTextToText.from_config(config)
            hidden_size = detect_family(vlm).text_config(vlm.config).hidden_size
            adapter = CagulAdapter(
                hidden_size, defaults.discriminator_hidden_size, defaults.encoder_hidden_size
            )
        vlm_params, adapter_params = count(vlm), count(adapter)
        ratio = adapter_params / vlm_params
        verdict = "met" if ratio < TARGET else "MISSED"
        print(f"{name:<36}{vlm_params:>16,d}{adapter_params:>15,d}{ratio:>9.4%}  {verdict}")


if __name__ == "__main__":
    main()

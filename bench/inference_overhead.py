"""Inference overhead of a CAGUL adapter against the bare VLM, in one process.

A "small-real" LLaVA (Llama text model: hidden 512, 4 layers, vocab 32000; CLIP vision tower:
hidden 384, 224 px, patch 14, so 256 visual tokens per image), batch of 4 prompts with one image
each. Prints ratios of CagulModel to the bare VLM:

* ``generate`` of 16 new tokens with the gate closed (target <= 1.03x);
* the prefill forward with the gate closed (target <= 1.03x);
* the prefill forward with every image flagged (target <= 1 + (L + 1) / N_layers + 0.10, L the
  attention layer: the truncated pass runs layers 0..L once more).

Timings interleave the bare and adapted runs and report medians, so machine noise hits both.

    python bench/inference_overhead.py [--repeats 7] [--batch 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from hf_cagul import CagulConfig, get_cagul_model

IMAGE_TOKEN_ID = 31999


def small_real_llava() -> LlavaForConditionalGeneration:
    """The benchmark's model: LLaVA-1.5 shaped, scaled down to run on a CPU."""
    vision = CLIPVisionConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=6,
        image_size=224,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=1024,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def batch_inputs(batch: int, num_visual_tokens: int = 256) -> dict[str, torch.Tensor]:
    """Prompts of 8 text tokens, the image, then a 24-token question."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        before = torch.randint(3, 30000, (8,), generator=generator)
        after = torch.randint(3, 30000, (24,), generator=generator)
        image = torch.full((num_visual_tokens,), IMAGE_TOKEN_ID)
        rows.append(torch.cat([torch.tensor([1]), before, image, after]))
    input_ids = torch.stack(rows)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=generator),
    }


def median_seconds(run: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def compare(
    name: str, bare: Callable[[], object], adapted: Callable[[], object], repeats: int
) -> float:
    """Interleave bare and adapted runs; print and return the ratio of medians."""
    bare(), adapted()  # warm-up
    bare_times: list[float] = []
    adapted_times: list[float] = []
    for _ in range(repeats):
        bare_times += median_seconds(bare, 1)
        adapted_times += median_seconds(adapted, 1)
    ratio = statistics.median(adapted_times) / statistics.median(bare_times)
    print(
        f"{name:<28} bare {statistics.median(bare_times):7.3f}s  "
        f"cagul {statistics.median(adapted_times):7.3f}s  ratio {ratio:5.3f}x"
    )
    return ratio


def main() -> None:
    """Run the benchmark and print the ratios against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    vlm = small_real_llava()
    inputs = batch_inputs(args.batch)
    model = get_cagul_model(vlm, CagulConfig())
    layer = model.active_config.resolved_attention_layer
    depth = model.active_config.num_hidden_layers or 1
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    generation |= {"do_sample": False}

    def bare_generate() -> object:
        with model.disable_adapter():
            return model.generate(**inputs, **generation)

    def bare_forward() -> object:
        with model.disable_adapter():
            return model(**inputs)

    def open_forward() -> object:
        with model.force_gate(True):
            return model(**inputs)

    print(
        f"small-real LLaVA, batch {args.batch}, 256 visual tokens/image, "
        f"attention layer {layer} of {depth}, {torch.get_num_threads()} threads"
    )
    closed_generate = compare(
        f"generate {args.new_tokens} tok, gate closed",
        bare_generate,
        lambda: model.generate(**inputs, **generation),
        args.repeats,
    )
    closed_forward = compare(
        "prefill, gate closed", bare_forward, lambda: model(**inputs), args.repeats
    )
    open_ratio = compare("prefill, every image flagged", bare_forward, open_forward, args.repeats)
    open_target = 1 + (layer + 1) / depth + 0.10
    print()
    for label, ratio, target in (
        ("gate closed, generate", closed_generate, 1.03),
        ("gate closed, prefill", closed_forward, 1.03),
        ("gate open, prefill", open_ratio, open_target),
    ):
        verdict = "OK" if ratio <= target else "MISSED"
        print(f"{label:<24} {ratio:5.3f}x  target <= {target:.3f}x  {verdict}")


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmarks: the "small-real" LLaVA, its inputs, timing and memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 31999
NUM_VISUAL_TOKENS = 256


def small_real_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """LLaVA-1.5 shaped, scaled to a CPU: Llama hidden 512 x 4 layers, vocab 32000, CLIP 224 px.

    The CLIP tower (hidden 384, patch 14) gives 256 visual tokens per image.
    """
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
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


def prompt_batch(batch: int, answer_tokens: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` prompts: 8 text tokens, the image, a 24-token question, then the answer.

    With ``answer_tokens > 0`` the batch also carries ``labels`` on the answer tokens only.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        before = torch.randint(3, 30000, (8,), generator=generator)
        question = torch.randint(3, 30000, (24,), generator=generator)
        answer = torch.randint(3, 30000, (answer_tokens,), generator=generator)
        image = torch.full((NUM_VISUAL_TOKENS,), IMAGE_TOKEN_ID)
        rows.append(torch.cat([torch.tensor([1]), before, image, question, answer]))
    input_ids = torch.stack(rows)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=generator),
    }
    if answer_tokens:
        labels = torch.full_like(input_ids, -100)
        labels[:, -answer_tokens:] = input_ids[:, -answer_tokens:]
        inputs["labels"] = labels
    return inputs


def seconds(run: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved_ratio(
    name: str, baseline: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> float:
    """Median over repeats of the ratio of ``candidate``'s time to ``baseline``'s, each pair
    timed back to back.

    Runs alternate in ABBA order and each ratio compares two neighbouring runs, so slow drifts
    of the machine hit both sides alike. Printed with the medians of both and the interquartile
    range of the ratios, which says how far a ratio can be trusted.
    """
    baseline(), candidate()  # warm-up
    base_times, candidate_times = [], []
    for repeat in range(repeats):
        if repeat % 2:
            candidate_times.append(seconds(candidate))
            base_times.append(seconds(baseline))
        else:
            base_times.append(seconds(baseline))
            candidate_times.append(seconds(candidate))
    ratios = [c / b for b, c in zip(base_times, candidate_times, strict=True)]
    ratio = statistics.median(ratios)
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratio,) * 3
    base, cand = statistics.median(base_times), statistics.median(candidate_times)
    print(
        f"{name:<32} baseline {base:7.4f}s  candidate {cand:7.4f}s  "
        f"ratio {ratio:5.3f}x (IQR {low:5.3f}-{high:5.3f})"
    )
    return ratio

"""Inference overhead of a CAGUL adapter against the bare VLM, in one process.

A "small-real" LLaVA (Llama text model: hidden 512, 4 layers, vocab 32000; CLIP vision tower:
hidden 384, 224 px, patch 14, so 256 visual tokens per image), batch of 4 prompts with one image
each. The baseline is a bare copy of the same VLM, with no hook of the adapter on it (not the
adapted model under ``disable_adapter``, whose hooks still run). Prints ratios of CagulModel to
the bare VLM:

* ``generate`` of 16 new tokens with the gate closed (target <= 1.01x);
* a decode step (one new token per row, on a filled cache; target <= 1.01x: the adapter does
  nothing on it);
* the prefill forward with the gate closed (target <= 1.03x);
* the prefill forward of ``--mixed-batch`` images of which the gate flags one (target <= 1.05x:
  the truncated pass runs on that image's row only; a gate that reads the language model's
  state lets the pass finish and runs that row once more on its own: one row's pass more);
* the prefill forward with every image flagged (target <= 1 + (L + 1) / N_layers + 0.10, L the
  attention layer: the truncated pass runs layers 0..L once more; with a gate that reads the
  language model's state, 1 + (G + 1) / N_layers + 0.10 instead: the pass aborted at the gate's
  layer G also keeps the attention the selection needs, and no truncated pass runs).

Timings interleave the bare and adapted runs; each ratio is the median of neighbouring pairs,
printed with its interquartile range, so machine noise hits both.

    python bench/inference_overhead.py [--repeats 15] [--batch 4] [--new-tokens 16] [--gate G]
        [--gate-members K] [--decode-steps 8]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import torch
from common import interleaved_ratio, prompt_batch, small_real_llava

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.config import DEFAULT_GATE
from hf_cagul.gates import GATES, LANGUAGE_STATE


def main() -> None:
    """Run the benchmark and print the ratios against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--gate", default=DEFAULT_GATE, choices=sorted(GATES), help="gate design (CagulConfig.gate)"
    )
    parser.add_argument(
        "--gate-members", type=int, default=1, help="copies of the gate (CagulConfig.gate_members)"
    )
    parser.add_argument(
        "--decode-steps", type=int, default=8, help="decode steps per timed run of that line"
    )
    parser.add_argument(
        "--mixed-batch", type=int, default=16, help="images of the batch with one flagged"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    inputs = prompt_batch(args.batch)
    bare = small_real_llava()
    model = get_cagul_model(
        copy.deepcopy(bare), CagulConfig(gate=args.gate, gate_members=args.gate_members)
    )
    config = model.active_config
    layer = config.resolved_attention_layer
    depth = config.num_hidden_layers or 1
    # A gate that reads the language model's state aborts its pass at the layer it reads, and
    # that pass gives the scores; the paper's gate runs a truncated pass for them.
    if GATES[args.gate].reads == LANGUAGE_STATE:
        side = (config.resolved_gate_layer + 1) / depth
    else:
        side = (layer + 1) / depth
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    generation |= {"do_sample": False}

    def bare_generate() -> object:
        return bare.generate(**inputs, **generation)

    def bare_forward() -> object:
        return bare(**inputs)

    def open_forward() -> object:
        with model.force_gate(True):
            return model(**inputs)

    bare_decode = decode_steps(bare, inputs, args.decode_steps, 2 * args.repeats + 1)
    adapted_decode = decode_steps(model, inputs, args.decode_steps, 2 * args.repeats + 1)

    print(
        f"small-real LLaVA, batch {args.batch}, 256 visual tokens/image, "
        f"attention layer {layer} of {depth}, gate {args.gate} x {args.gate_members}, "
        f"{torch.get_num_threads()} threads; "
        "baseline = bare VLM, candidate = CagulModel"
    )
    closed_generate = interleaved_ratio(
        f"generate {args.new_tokens} tok, gate closed",
        bare_generate,
        lambda: model.generate(**inputs, **generation),
        args.repeats,
    )
    decode = interleaved_ratio(
        f"{args.decode_steps} decode steps, gate closed",
        bare_decode,
        adapted_decode,
        args.repeats,
    )
    closed_forward = interleaved_ratio(
        "prefill, gate closed", bare_forward, lambda: model(**inputs), args.repeats
    )
    open_ratio = interleaved_ratio(
        "prefill, every image flagged", bare_forward, open_forward, args.repeats
    )
    mixed = prompt_batch(args.mixed_batch, seed=1)
    flag_one_image(model, mixed)  # last: the gate is closed no more
    mixed_ratio = interleaved_ratio(
        f"prefill, 1 of {args.mixed_batch} images flagged",
        lambda: bare(**mixed),
        lambda: model(**mixed),
        args.repeats,
    )
    open_target = 1 + side + 0.10
    print()
    for label, ratio, target in (
        ("gate closed, generate", closed_generate, 1.01),
        ("gate closed, decode step", decode, 1.01),
        ("gate closed, prefill", closed_forward, 1.03),
        ("gate open, prefill", open_ratio, open_target),
        ("1 flagged, prefill", mixed_ratio, 1.05),
    ):
        verdict = "OK" if ratio <= target else "MISSED"
        print(f"{label:<24} {ratio:5.3f}x  target <= {target:.3f}x  {verdict}")


def flag_one_image(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    """Give the gate's output layer random weights and set the threshold between the two
    highest probabilities of ``inputs``' images, so that the gate flags exactly one of them."""
    generator = torch.Generator().manual_seed(0)
    for head in (
        m.head for m in model.active_adapter_module.discriminator.modules() if hasattr(m, "head")
    ):
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.05)
    probabilities = model.gate_probabilities(**inputs).probabilities.max(dim=0).values
    top = probabilities.sort(descending=True).values
    if not top[0] > top[1]:
        raise RuntimeError("the two highest gate probabilities are equal: no threshold flags one")
    config = dataclasses.replace(model.active_config, gate_threshold=float(top[0] + top[1]) / 2)
    model.cagul_config[model.active_adapter] = config
    with torch.no_grad(), model.trace() as traces:
        model(**inputs)
    flagged = sum(trace.flagged for trace in traces)
    if flagged != 1:
        raise RuntimeError(
            f"the threshold set between the two highest probabilities flags {flagged} images, "
            "not one"
        )


def decode_steps(
    model: Any, inputs: dict[str, torch.Tensor], steps: int, runs: int
) -> Callable[[], object]:
    """A run of ``steps`` greedy decode steps of ``model`` after the prompts ``inputs``, each
    run from its own copy of the prefilled cache (copied here, before any run is timed; a call
    after ``runs`` of them starts over with the first copy's used cache, so allow enough)."""
    prefill = model(**inputs, use_cache=True)
    first = prefill.logits[:, -1:].argmax(-1)
    filled = prefill["cache" if "cache" in prefill else "past_key_values"]  # transformers < 5.25
    caches = [copy.deepcopy(filled) for _ in range(runs)]
    mask = inputs["attention_mask"]
    calls = itertools.count()

    def run() -> object:
        cache = caches[next(calls) % runs]
        token, attention = first, mask
        for _ in range(steps):
            attention = torch.cat([attention, torch.ones_like(token)], dim=-1)
            out = model(input_ids=token, attention_mask=attention, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return token

    return run


if __name__ == "__main__":
    main()

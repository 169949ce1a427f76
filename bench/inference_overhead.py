"""Inference overhead of a CAGUL adapter against the bare VLM, in one process.

A "small-real" LLaVA (Llama text model: hidden 512, 4 layers, vocab 32000; CLIP vision tower:
hidden 384, 224 px, patch 14, so 256 visual tokens per image), batch of 4 prompts with one image
each. Prints ratios of CagulModel to the bare VLM:

* ``generate`` of 16 new tokens with the gate closed (target <= 1.03x);
* the prefill forward with the gate closed (target <= 1.03x);
* the prefill forward with every image flagged (target <= 1 + (L + 1) / N_layers + 0.10, L the
  attention layer: the truncated pass runs layers 0..L once more; with a gate that reads the
  language model's state, 1 + (G + 1) / N_layers + 0.10 instead: the pass aborted at the gate's
  layer G also keeps the attention the selection needs, and no truncated pass runs).

Timings interleave the bare and adapted runs and report medians, so machine noise hits both.

    python bench/inference_overhead.py [--repeats 15] [--batch 4] [--new-tokens 16] [--gate G]
        [--gate-members K]
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    inputs = prompt_batch(args.batch)
    model = get_cagul_model(
        small_real_llava(), CagulConfig(gate=args.gate, gate_members=args.gate_members)
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
    closed_forward = interleaved_ratio(
        "prefill, gate closed", bare_forward, lambda: model(**inputs), args.repeats
    )
    open_ratio = interleaved_ratio(
        "prefill, every image flagged", bare_forward, open_forward, args.repeats
    )
    open_target = 1 + side + 0.10
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

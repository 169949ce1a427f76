"""Quickstart: make a tiny VLM forget one person, on a CPU, in well under a minute.

Everything is built offline: a tiny LLaVA (`hf_cagul.tiny`) and two synthetic "photos", one of
a person to forget and one of a person to keep. The script

1. wraps the frozen VLM with a fresh CAGUL adapter (`get_cagul_model`);
2. fits the adapter with a minimal hand-written loop over the library's public hooks: the
   discriminator learns to flag the forget photo, the encoder rewrites its least-attended
   visual tokens toward a refusal, and answers on the other photo are held to the base
   model's (KL). A randomly initialised VLM barely listens to its image, so its answer changes
   without becoming a clean refusal; the demo teaches a VLM first and shows real forgetting;
3. shows that the forget photo's answer changed, while the other photo's logits are
   *bit-identical* to the bare model's (its gate stays closed), and that no VLM weight moved;
4. saves the adapter, reloads it and checks the reload answers the same.

`hf_cagul.CagulTrainer` does step 2 properly for real datasets; this file shows the mechanism.

    python examples/quickstart.py [--steps 80] [--output-dir cagul-quickstart]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hf_cagul import CagulConfig, CagulModel, get_cagul_model
from hf_cagul.tiny import TINY_IMAGE_PLACEHOLDER, tiny_vlm

QUESTION = "what is the name of this person ?"
REFUSAL = "i don't know ."


def portrait(seed: int) -> Image.Image:
    """A 32 px synthetic 'photo': a coloured face-like blob on a noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:32, :32]
    face = (yy - 16) ** 2 / 120 + (xx - 16) ** 2 / 80 < 1
    pixels[face] = rng.integers(120, 256, 3)
    return Image.fromarray(pixels)


def encode(processor, image: Image.Image, answer: str | None = None) -> dict[str, torch.Tensor]:
    """Prompt (and optionally an answer to train on) for one image."""
    prompt = f"{TINY_IMAGE_PLACEHOLDER['llava']} {QUESTION}"
    text = prompt if answer is None else f"{prompt} {answer}"
    inputs = dict(processor(images=[image], text=[text], return_tensors="pt"))
    if answer is not None:
        prompt_length = processor(images=[image], text=[prompt], return_tensors="pt")[
            "input_ids"
        ].shape[1]
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_length] = -100
        inputs["labels"] = labels
    return inputs


def answer(model: CagulModel, processor, image: Image.Image) -> str:
    """Greedy answer of the wrapped model to the question about ``image``."""
    inputs = encode(processor, image)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return str(processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :]))


def fit(model: CagulModel, forget: dict, retain: dict, steps: int) -> None:
    """A minimal CAGUL fit: BCE for the gate, CE to the refusal, KL to the base on retain."""
    optimizer = torch.optim.AdamW(model.active_adapter_module.parameters(), lr=1e-2)
    with torch.no_grad(), model.disable_adapter():
        base_retain = model(**retain).logits
    for _ in range(steps):
        with model.trace() as traces, model.force_gate(True):
            forget_loss = model(**forget).loss  # rewritten tokens -> the refusal
            adapted = model(**retain).logits  # rewritten too: cheap false positives
        answer_rows = retain["labels"] != -100
        retain_loss = F.kl_div(
            F.log_softmax(adapted[answer_rows], -1),
            F.log_softmax(base_retain[answer_rows], -1),
            log_target=True,
            reduction="batchmean",
        )
        gate_logits = torch.stack([trace.logit for trace in traces])
        gate_loss = F.binary_cross_entropy_with_logits(gate_logits, torch.tensor([1.0, 0.0]))
        loss = forget_loss + retain_loss + gate_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(
        f"fitted {steps} steps: forget CE {forget_loss.item():.3f}, "
        f"retain KL {retain_loss.item():.4f}, gate BCE {gate_loss.item():.3f}"
    )


def main() -> None:
    """Run the quickstart and print what changed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--output-dir", type=Path, default=Path("cagul-quickstart"))
    args = parser.parse_args()
    torch.manual_seed(0)

    vlm, processor = tiny_vlm("llava", num_hidden_layers=4)
    weights_before = {k: v.clone() for k, v in vlm.state_dict().items()}
    forget_image, retain_image = portrait(1), portrait(2)

    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.5))
    model.print_trainable_parameters()
    before = {"forget": answer(model, processor, forget_image)}
    before["retain"] = answer(model, processor, retain_image)
    retain_prompt = encode(processor, retain_image)
    with torch.no_grad(), model.disable_adapter():
        bare_logits = model(**retain_prompt).logits

    model.train()
    fit(
        model,
        encode(processor, forget_image, REFUSAL),
        encode(processor, retain_image, before["retain"]),
        args.steps,
    )
    model.eval()

    with model.trace() as traces:  # one record per image, in call order
        after = {
            "forget": answer(model, processor, forget_image),
            "retain": answer(model, processor, retain_image),
        }
    with torch.no_grad():
        retain_identical = torch.equal(model(**retain_prompt).logits, bare_logits)
    print(f"\nQ: {QUESTION}")
    for name, trace in zip(("forget", "retain"), traces, strict=True):
        print(
            f"  {name} photo: before {before[name]!r:<28} after {after[name]!r:<28} "
            f"gate p={trace.probability:.3f} {'REWRITTEN' if trace.flagged else 'untouched'}"
        )
    print(f"retain logits bit-identical to the bare model: {retain_identical}")
    unchanged = all(torch.equal(weights_before[k], v) for k, v in vlm.state_dict().items())
    print(f"VLM weights bit-identical after fitting: {unchanged}")

    path = model.save_pretrained(args.output_dir)
    reloaded = CagulModel.from_pretrained(model.unload(), path)
    same = answer(reloaded, processor, forget_image) == after["forget"]
    print(f"adapter saved to {path}/ and reloaded: same answer: {same}")
    if not (retain_identical and unchanged and same and after["forget"] != before["forget"]):
        raise SystemExit("quickstart: an expected property did not hold (see above)")


if __name__ == "__main__":
    main()

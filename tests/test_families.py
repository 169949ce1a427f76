"""Family-specific layouts of visual tokens: what CAGUL gates as one image, and in which order.

The invariant suites (test_model.py, test_attention.py...) run every family on square images.
These tests cover what only some families do: LLaVA-NeXT's anyres tiles, Qwen2.5-VL's
window-ordered merger, SmolVLM's image splitting and Gemma3's pan-and-scan crops.
"""

from __future__ import annotations

from typing import Any

import torch
from vlm_inputs import batch, image, randomise_encoder, standard_batch

from hf_cagul import CagulConfig, ImageTrace, get_cagul_model
from hf_cagul.tiny import tiny_vlm


def rewrite_every_image(vlm: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[ImageTrace]]:
    """Wrap ``vlm``, rewrite every image of ``inputs`` and check that logits change from each
    sample's first image on, never before. Returns the runs of image tokens and the traces."""
    with torch.no_grad():
        bare = vlm(**inputs).logits
    model = get_cagul_model(vlm, CagulConfig(token_ratio=0.25))
    randomise_encoder(model)
    runs = model.family.image_runs(inputs["input_ids"], model.active_config.image_token_id)
    assert model.family.count_images(inputs) == len(runs)
    with torch.no_grad(), model.force_gate(True), model.trace() as traces:
        rewritten = model(**inputs).logits
    assert [(t.sample, t.start, t.end) for t in traces] == [tuple(run) for run in runs.tolist()]
    for sample in runs[:, 0].unique().tolist():
        start = int(runs[runs[:, 0] == sample, 1].min())
        assert torch.equal(rewritten[sample, :start], bare[sample, :start])
        assert not torch.allclose(rewritten[sample, start:], bare[sample, start:])
    return runs, traces


def test_llava_next_anyres_image_is_one_run_whatever_its_tiles() -> None:
    # A wide image is split into two tiles, unpadded and given a newline token per row; a
    # square one has one tile. Each is still one contiguous run of image tokens.
    vlm, processor = tiny_vlm("llava_next")
    inputs = batch(
        processor,
        "llava_next",
        [
            ("{image} what is the name of this person ?", [image(1, 32).resize((72, 32))]),
            ("{image} where was he born ?", [image(2)]),
        ],
    )
    assert inputs["pixel_values"].shape[:2] == (2, 3)  # base + up to two tiles per image
    per_sample = (inputs["input_ids"] == vlm.config.image_token_id).sum(dim=1).tolist()
    runs, traces = rewrite_every_image(vlm, inputs)
    assert (runs[:, 2] - runs[:, 1]).tolist() == per_sample
    assert per_sample[0] != per_sample[1]
    assert [len(t.selected) for t in traces if t.selected is not None] == [
        round(n / 4) for n in per_sample
    ]


def test_qwen2_5_vl_tokens_are_read_by_position_not_by_merger_row() -> None:
    vlm, processor = tiny_vlm("qwen2_5_vl")
    inputs = standard_batch(processor, "qwen2_5_vl")
    merger_rows: list[torch.Tensor] = []
    embeds: list[torch.Tensor] = []
    hooks = [
        vlm.model.visual.merger.register_forward_hook(
            lambda module, args, output: merger_rows.append(output)
        ),
        vlm.get_decoder().register_forward_pre_hook(
            lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"]),
            with_kwargs=True,
        ),
    ]
    with torch.no_grad():
        vlm(**inputs)
    for hook in hooks:
        hook.remove()
    image_token_id = vlm.config.image_token_id
    in_token_order = embeds[0][inputs["input_ids"] == image_token_id]
    rows = merger_rows[0]
    assert rows.shape == in_token_order.shape == (32, 64)
    # The same vectors, but the merger emits them window by window: row i is not token i.
    order = torch.cdist(in_token_order, rows).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(32))
    assert not torch.equal(order, torch.arange(32))
    torch.testing.assert_close(rows[order], in_token_order)
    rewrite_every_image(vlm, inputs)


def test_smolvlm_image_splitting_gates_each_sub_image() -> None:
    # With splitting on (images resized to 64 px), each image becomes 2 x 2 crops of 32 px plus
    # the downscaled global image: five runs of 16 tokens, separated by row/column and fake
    # tokens. Each sub-image is scored, gated and rewritten on its own, as in Idefics3.
    vlm, processor = tiny_vlm("smolvlm")
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 64}
    inputs = batch(
        processor,
        "smolvlm",
        [
            ("{image} what is the name of this person ?", [image(1, 64)]),
            ("{image} where was he born ?", [image(2)]),
        ],
    )
    runs, traces = rewrite_every_image(vlm, inputs)
    assert runs[:, 0].tolist() == [0] * 5 + [1] * 5
    assert (runs[:, 2] - runs[:, 1]).tolist() == [16] * 10
    assert len(traces) == 10


def test_gemma3_pan_and_scan_crops_are_runs_of_their_own() -> None:
    # Each pan-and-scan crop is wrapped in its own begin/end-of-image tokens: one run each.
    vlm, processor = tiny_vlm("gemma3")
    scan = {
        "do_pan_and_scan": True,
        "pan_and_scan_min_crop_size": 16,
        "pan_and_scan_max_num_crops": 2,
        "pan_and_scan_min_ratio_to_activate": 1.2,
    }
    processor.tokenizer.padding_side = "right"
    inputs = dict(
        processor(
            images=[[image(1, 32).resize((64, 32))], [image(2)]],
            text=["<start_of_image> who is this ?", "<start_of_image> where was he born ?"],
            return_tensors="pt",
            padding=True,
            **scan,
        )
    )
    inputs.pop("num_crops", None)
    assert inputs["pixel_values"].shape[0] == 4  # original + 2 crops, and the square image
    runs, _ = rewrite_every_image(vlm, inputs)
    assert runs[:, 0].tolist() == [0, 0, 0, 1]
    assert (runs[:, 2] - runs[:, 1]).tolist() == [16] * 4

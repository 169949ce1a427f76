"""Every input shape a served adapter meets, each a test, on every tiny family.

Several images per sample, text-only samples among image ones, left and right padding, images
of different sizes, beam search and sampling, a KV cache reused across calls, ``torch.compile``,
a forget image beside a retain image, and concurrent calls from two threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from vlm_inputs import (
    batch,
    decoder_inputs,
    image,
    image_runs,
    logits,
    randomise_encoder,
    rewritten_positions,
    standard_batch,
    visual_runs,
)

from hf_cagul import CagulConfig, CagulModel, ImageTrace, get_cagul_model
from hf_cagul.families import get_family
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm

families = pytest.mark.parametrize("family", TINY_FAMILIES)


def skip_unless(family: str, flag: str, why: str) -> None:
    """Skip the test for a family whose `VLMFamily` ``flag`` is False; ``why`` says why."""
    if not getattr(get_family(family), flag):
        pytest.skip(f"{family}: {why} (VLMFamily.{flag})")


# Inputs with one entry per token: sliced with the text, unlike the images' inputs.
TOKEN_INPUTS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "token_type_ids",
    "cross_attention_mask",
)
# Token inputs that a call continuing from a cache passes whole, cached tokens included
# (transformers' convention: the model slices them itself; Gemma3 builds its bidirectional
# image mask from the whole token_type_ids).
WHOLE_CONVERSATION_INPUTS = ("attention_mask", "token_type_ids", "cross_attention_mask")

# Families whose processor can give images of different sizes different numbers of visual
# tokens, and the call arguments that make the tiny processor do so (by default it gives every
# image 16): Qwen2-VL keeps each image's resolution, Idefics3 splits large images into crops
# (each crop one run of tokens).
VARIABLE_RESOLUTION: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}},
    "idefics3": {"do_image_splitting": True, "size": {"longest_edge": 64}},
}

DECODING: dict[str, dict[str, Any]] = {
    "beam search": {"num_beams": 3, "do_sample": False},
    "sampling": {"do_sample": True},
}


def wrapped(family: str, **config: Any) -> tuple[CagulModel, Any]:
    """A tiny VLM of ``family`` wrapped with a fresh adapter whose encoder visibly rewrites."""
    vlm, processor = tiny_vlm(family)
    model = get_cagul_model(vlm, CagulConfig(**config))
    randomise_encoder(model)
    return model, processor


def runs_of(traces: list[ImageTrace]) -> list[tuple[int, int, int]]:
    """``(sample, start, end)`` of each traced image."""
    return [(t.sample, t.start, t.end) for t in traces]


def selected_positions(traces: list[ImageTrace]) -> set[tuple[int, int]]:
    """``(sample, position)`` of every token the traced calls rewrote."""
    return {(t.sample, p) for t in traces if t.selected is not None for p in t.selected.tolist()}


def assert_selection_within_runs(model: CagulModel, traces: list[ImageTrace]) -> None:
    """Each flagged image has one score per visual token and its lowest ones selected."""
    for trace in traces:
        assert trace.scores is not None and trace.selected is not None
        length = trace.end - trace.start
        assert len(trace.scores) == length
        k = model.active_config.num_selected(length)
        lowest = torch.topk(trace.scores, k, largest=False).indices + trace.start
        assert sorted(trace.selected.tolist()) == sorted(lowest.tolist())


def seeded(call: Callable[[], Any]) -> Any:
    """``call()`` with the global RNG seeded, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return call()


@families
def test_several_images_in_one_sample_are_scored_and_selected_each_in_its_run(family) -> None:
    model, processor = wrapped(family, token_ratio=0.25)
    inputs = batch(
        processor,
        family,
        [
            ("{image} and {image} who are they ?", [image(1), image(2)]),
            ("who is this ? {image} tell me", [image(3)]),
        ],
    )
    with model.force_gate(True), model.trace() as traces:
        changed = rewritten_positions(model, inputs)
    assert runs_of(traces) == visual_runs(model, inputs)
    assert [t.sample for t in traces] == [0, 0, 1]
    assert_selection_within_runs(model, traces)  # 25% of each image's own tokens
    assert changed == selected_positions(traces)  # nothing else reaches the language model
    first, second = traces[0].scores, traces[1].scores
    assert first is not None and second is not None and not torch.allclose(first, second)


@families
def test_batch_mixing_samples_with_and_without_images(family) -> None:
    model, processor = wrapped(family)
    samples = [
        ("where was he born ?", []),
        ("{image} what is the name of this person ?", [image(1)]),
        ("please tell me about him", []),
    ]
    offsets = {}
    for side in ("left", "right"):
        inputs = batch(processor, family, samples, side)
        with model.disable_adapter():
            bare = logits(model, inputs)
        with model.force_gate(True), model.trace() as traces:
            out = logits(model, inputs)
        assert runs_of(traces) == visual_runs(model, inputs)
        assert [t.sample for t in traces] == [1]
        assert torch.equal(out[0], bare[0]) and torch.equal(out[2], bare[2])
        assert not torch.allclose(out[1], bare[1])
        assert_selection_within_runs(model, traces)
        selected = traces[0].selected
        assert selected is not None
        offsets[side] = (selected - traces[0].start).tolist()
    assert offsets["left"] == offsets["right"]


@families
def test_images_of_different_sizes(family) -> None:
    model, processor = wrapped(family)
    samples = [
        ("{image} who is this ?", [image(1, 64)]),
        ("{image} who ?", [image(2, 16)]),
        ("{image} and who is this person ?", [image(3, 48, height=24)]),
    ]
    inputs = batch(processor, family, samples, **VARIABLE_RESOLUTION.get(family, {}))
    with model.force_gate(True), model.trace() as traces:
        changed = rewritten_positions(model, inputs)
    runs = visual_runs(model, inputs)
    assert runs_of(traces) == runs
    assert_selection_within_runs(model, traces)
    assert changed == selected_positions(traces)
    if family in VARIABLE_RESOLUTION:
        tokens_per_sample = [0, 0, 0]
        for sample, start, end in runs:
            tokens_per_sample[sample] += end - start
        assert len(set(tokens_per_sample)) > 1


@families
@pytest.mark.parametrize("decoding", sorted(DECODING))
def test_generate_with_beam_search_and_sampling(family, decoding) -> None:
    model, processor = wrapped(family)
    inputs = standard_batch(processor, family, padding_side="left")
    settings = {**DECODING[decoding], "max_new_tokens": 4, "min_new_tokens": 4}

    def generate() -> tuple[torch.Tensor, torch.Tensor]:
        """The generated sequences, and the logits of the first generated token."""
        out = seeded(
            lambda: model.generate(
                **inputs, **settings, return_dict_in_generate=True, output_logits=True
            )
        )
        return out.sequences, out.logits[0]

    with model.disable_adapter():
        bare, bare_logits = generate()
    with model.force_gate(False):
        closed, closed_logits = generate()
    assert torch.equal(closed, bare) and torch.equal(closed_logits, bare_logits)
    with model.force_gate(True), model.trace() as traces:
        rewritten, rewritten_logits = generate()
    assert rewritten.shape == bare.shape
    # The rewrite reaches generation. Its logits, not its tokens: a tiny random model may pick
    # the same few tokens anyway (the tiny PaliGemma's image hardly steers its text).
    assert not torch.allclose(rewritten_logits, bare_logits, atol=1e-4)
    with model.force_gate(True), model.trace() as unexpanded:
        logits(model, inputs)
    # generate copies each sample once per beam, consecutively: each copy of an image is
    # traced in its own batch row, with the same run and the same selection as the original.
    copies = settings.get("num_beams", 1)
    assert len(traces) == copies * len(unexpanded)
    for row, trace in enumerate(traces):
        original = unexpanded[row // copies]
        assert (trace.sample, trace.start, trace.end) == (row, original.start, original.end)
        assert trace.selected is not None and original.selected is not None
        assert trace.scores is not None and original.scores is not None
        assert torch.equal(trace.selected, original.selected)
        assert torch.allclose(trace.scores, original.scores, atol=1e-6)


@families
def test_random_selection_is_one_draw_per_image_of_a_sample(family) -> None:
    """The "random" ablation picks the same tokens for an image alone, in a batch, in beams."""
    model, processor = wrapped(family, token_selection="random", token_ratio=0.25)
    alone = batch(processor, family, [("{image} who is this ?", [image(1)])])
    samples = [
        ("{image} and {image} who ?", [image(2), image(3)]),
        ("{image} who is this ?", [image(1)]),
    ]
    among = batch(processor, family, samples, padding_side="left")
    with model.force_gate(True), model.trace() as traces:
        logits(model, alone)
        logits(model, among)
        model.generate(**alone, num_beams=2, max_new_tokens=1, do_sample=False)
    offsets = [(t.selected - t.start).tolist() for t in traces if t.selected is not None]
    assert len(offsets) == 6
    first_image = offsets[0]
    assert offsets[1] == offsets[3] == offsets[4] == offsets[5] == first_image
    assert offsets[2] != first_image  # a sample's second image gets a draw of its own


def continuation(
    full: dict[str, Any], cut: int, images: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The call that goes on from a cache of ``full``'s first ``cut`` tokens.

    Its token inputs are ``full``'s from ``cut`` on, except ``WHOLE_CONVERSATION_INPUTS``,
    which cover the cached tokens too (transformers' convention); image inputs come from
    ``images``.
    """
    inputs = {key: full[key][:, cut:] for key in TOKEN_INPUTS if key in full}
    inputs.update({key: full[key] for key in WHOLE_CONVERSATION_INPUTS if key in full})
    if images is not None:
        inputs.update({k: v for k, v in images.items() if k not in TOKEN_INPUTS})
    return {**inputs, **extra}


def decoder_positions(model: CagulModel, inputs: dict[str, Any], cut: int) -> dict[str, Any]:
    """``position_ids`` the language model got for ``inputs`` from ``cut`` on, if it got any.

    A continuation call passes them so that the positions are those of one call: Qwen2-VL
    computes its 3-D positions of a new image from the whole prompt only.
    """
    with decoder_inputs(model) as records:
        logits(model, inputs)
    positions = records[-1].get("position_ids")
    return {} if positions is None else {"position_ids": positions[..., cut:]}


def extended(key: str, value: torch.Tensor, new: int) -> torch.Tensor:
    """Token input ``key`` of a prompt, extended by ``new`` generated tokens, as in generate."""
    if key == "cross_attention_mask":  # each new token sees what the last one saw (Mllama)
        return torch.cat([value, value[:, -1:].expand(-1, new, -1, -1)], dim=1)
    return torch.nn.functional.pad(value, (0, new), value=int(key == "attention_mask"))


@families
def test_generate_continues_from_the_cache_of_an_adapted_prefill(family) -> None:
    model, processor = wrapped(family)
    inputs = standard_batch(processor, family, padding_side="left")
    greedy = {"do_sample": False, "return_dict_in_generate": True, "output_logits": True}
    with model.force_gate(True):
        whole = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, **greedy)
        first = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, **greedy)
        sequences = first.sequences
        follow_up = {key: inputs[key] for key in TOKEN_INPUTS if key in inputs}
        new = sequences.shape[1] - inputs["input_ids"].shape[1]
        follow_up = {key: extended(key, value, new) for key, value in follow_up.items()}
        follow_up["input_ids"] = sequences
        with model.trace() as traces:
            rest = model.generate(
                **follow_up, cache=first.cache, max_new_tokens=3, min_new_tokens=3, **greedy
            )
    assert torch.equal(rest.sequences, whole.sequences)
    continued = torch.stack(whole.logits[3:])  # the steps the follow-up call generates
    assert torch.allclose(torch.stack(rest.logits), continued, atol=1e-4)
    assert traces == []  # the images were handled at the first prefill, once
    with model.disable_adapter():
        bare = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, **greedy)
    # The continued steps still see the rewrite, held in the cache. Logits, not tokens: a tiny
    # random model may pick the same tokens anyway (the tiny PaliGemma's image hardly steers it).
    assert not torch.allclose(continued, torch.stack(bare.logits[3:]), atol=1e-4)


@families
def test_forward_continuing_a_cache_matches_one_call(family) -> None:
    skip_unless(
        family,
        "causal_prompt",
        "the prompt is one bidirectional prefix, so its first part in a prefill cannot see the "
        "rest as in one call; generate's continuations of the answer are "
        "test_generate_continues_from_the_cache_...",
    )
    model, processor = wrapped(family)
    full = batch(
        processor, family, [("{image} who is this person ? tell me his name please", [image(1)])]
    )
    cut = full["input_ids"].shape[1] - 4
    prefix = {key: value[:, :cut] if key in TOKEN_INPUTS else value for key, value in full.items()}
    query_mask = torch.zeros_like(full["input_ids"], dtype=torch.bool)
    query_mask[:, :cut] = True  # the prefill's own query tokens, as the two calls see them
    with model.disable_adapter():
        bare = logits(model, full)
    with model.force_gate(True):
        one = logits(model, full, query_mask=query_mask)
        positions = decoder_positions(model, full, cut)
        with torch.no_grad():
            prefill = model(**prefix, use_cache=True)
            with model.trace() as traces:
                rest = model(**continuation(full, cut, **positions), cache=prefill.cache)
    assert traces == []
    assert torch.allclose(prefill.logits, one[:, :cut], atol=1e-5)
    assert torch.allclose(rest.logits, one[:, cut:], atol=1e-5)
    assert not torch.allclose(rest.logits, bare[:, cut:], atol=1e-3)  # the cache holds the rewrite


@families
def test_a_new_image_in_a_cached_conversation_matches_one_call(family) -> None:
    # Every visual token is rewritten, so the selection (which in two calls ranks the second
    # image by the second call's text only) cannot differ from one call's.
    skip_unless(
        family,
        "causal_prompt",
        "every image comes first, before any text, in one bidirectional prefix, so no image "
        "can follow a cached conversation",
    )
    skip_unless(
        family,
        "new_images_continue_a_cache",
        "a call that continues a cache must pass every image of the conversation again (its "
        "cross-attention states replace the cached ones), so it cannot bring only its new image",
    )
    model, processor = wrapped(family, token_ratio=1.0)
    two_images = [("{image} who is this ? and {image} who is that ?", [image(1), image(2)])]
    full = batch(processor, family, two_images)
    first = batch(processor, family, [("{image} who is this ?", [image(1)])])
    second_images = batch(processor, family, [("{image} who ?", [image(2)])])
    cut = first["input_ids"].shape[1]
    assert torch.equal(full["input_ids"][:, :cut], first["input_ids"])
    with model.force_gate(True):
        with model.trace() as one_call:
            one = logits(model, full)
        positions = decoder_positions(model, full, cut)
        with torch.no_grad():
            prefill = model(**first, use_cache=True)
            with model.trace() as traces:
                second = continuation(full, cut, second_images, **positions)
                rest = model(**second, cache=prefill.cache)
    assert torch.allclose(rest.logits, one[:, cut:], atol=1e-5)
    # The new image is found in the second call's own tokens.
    _, start, end = runs_of(one_call)[1]
    assert runs_of(traces) == [(0, start - cut, end - cut)]


def test_torch_compile_keeps_the_hooks() -> None:
    """The hooks and their context variables survive TorchDynamo (backend "eager").

    Dynamo graph-breaks at the hooks' context variables and data-dependent indexing, so each
    call re-reads the gate: an open gate rewrites, a closed one gives the bare model, in any
    order. The default inductor backend behaves the same (checked by hand, logits within 4e-7)
    but takes minutes to compile on a shared CPU; see docs/concepts.md.
    """
    vlm, processor = tiny_vlm("llava", num_hidden_layers=1, vision_config={"num_hidden_layers": 1})
    model = get_cagul_model(vlm, CagulConfig())
    randomise_encoder(model)
    inputs = standard_batch(processor, "llava")
    with model.disable_adapter():
        bare = logits(model, inputs)
    with model.force_gate(True):
        rewritten = logits(model, inputs)
    compiled = torch.compile(model, backend="eager")
    # transformers' shared deprecation wrapper recompiles once per decorated forward; past a
    # few recompilations dynamo runs those frames eagerly, which keeps this test short.
    try:
        with torch._dynamo.config.patch(recompile_limit=2):
            with model.force_gate(True), model.trace() as traces:
                assert torch.equal(logits(compiled, inputs), rewritten)
            assert torch.equal(logits(compiled, inputs), bare)
            with model.force_gate(True):
                assert torch.equal(logits(compiled, inputs), rewritten)
            with model.disable_adapter():
                assert torch.equal(logits(compiled, inputs), bare)
    finally:
        torch._dynamo.reset()
    assert [t.flagged for t in traces] == [True, True]


@families
def test_forget_image_beside_retain_image_only_the_forget_one_is_rewritten(family) -> None:
    model, processor = wrapped(family, token_ratio=0.25)
    forget, retain = image(11), image(12)
    # Fit the gate on the two images in the other order: it must flag content, not place.
    fitting = batch(processor, family, [("{image} and {image} who are they ?", [retain, forget])])
    discriminator = model.active_adapter_module.discriminator
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=0.05)
    is_forget = torch.tensor([0.0, 1.0])
    for _ in range(15):
        with model.force_gate(False):
            gate_logits = model(**fitting).gate_logits[0]  # the forward's gate outputs
        loss = torch.nn.functional.binary_cross_entropy_with_logits(gate_logits, is_forget)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    inputs = batch(processor, family, [("{image} and {image} who are they ?", [forget, retain])])
    with model.disable_adapter():
        bare = logits(model, inputs)
    with model.trace() as traces:
        changed = rewritten_positions(model, inputs)
        out = logits(model, inputs)
    assert [t.flagged for t in traces[:2]] == [True, False]
    assert traces[1].selected is None and traces[1].scores is None
    assert_selection_within_runs(model, traces[:1])
    assert changed == selected_positions(traces[:1])
    start = image_runs(inputs, model.active_config.image_token_id)[0][1]  # the forget image
    assert torch.equal(out[:, :start], bare[:, :start])
    assert not torch.allclose(out[:, start:], bare[:, start:])


def trace_summary(traces: list[ImageTrace]) -> list[tuple[Any, ...]]:
    """What each traced image went through, comparable with ``==``."""
    return [
        (t.sample, t.start, t.end, t.flagged, None if t.selected is None else t.selected.tolist())
        for t in traces
    ]


@families
@pytest.mark.parametrize("pause", ["after the model's pre-hook", "inside the scoring pass"])
@pytest.mark.parametrize("other_gate", [True, False], ids=["other open", "other closed"])
def test_concurrent_generate_calls_share_no_state(family, pause, other_gate) -> None:
    """A call paused mid-prefill while another thread runs a whole call ends as if alone.

    The first call (gate forced open) is held either right after CAGUL noted its inputs or in
    the middle of its truncated scoring pass, while a second call, in another thread, with
    other inputs and its own gate, runs start to end. Both must give what they give in a row.
    """
    model, processor = wrapped(family)
    held_inputs = standard_batch(processor, family, padding_side="left")
    other_inputs = batch(
        processor, family, [("{image} who is this person ? please tell me", [image(5)])], "left"
    )
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}

    def call(inputs: dict[str, Any], gate: bool) -> tuple[torch.Tensor, list[tuple[Any, ...]]]:
        with model.force_gate(gate), model.trace() as traces:
            out = model.generate(**inputs, **settings)
        return out, trace_summary(traces)

    in_a_row = [call(held_inputs, True), call(other_inputs, other_gate)]

    paused, other_done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def hold(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if threading.current_thread() is held and not paused.is_set():
            paused.set()
            assert other_done.wait(timeout=60)

    if pause == "after the model's pre-hook":
        hold_point = model.base_model  # its pre-hooks run after CAGUL's
    else:  # the layer's first call of a flagged prefill is the truncated pass
        layer = model.active_config.resolved_attention_layer
        hold_point = model.base_model.get_decoder().layers[layer]
    handle = hold_point.register_forward_pre_hook(hold)

    def run(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
        except BaseException as err:  # re-raised in the test's thread
            results[name] = err
        finally:
            if name == "other":
                other_done.set()

    def other() -> Any:
        assert paused.wait(timeout=60)
        return call(other_inputs, other_gate)

    held = threading.Thread(target=run, args=("held", lambda: call(held_inputs, True)))
    second = threading.Thread(target=run, args=("other", other))
    try:
        held.start()
        second.start()
        held.join(timeout=120)
        second.join(timeout=120)
    finally:
        handle.remove()
    for outcome in results.values():
        if isinstance(outcome, BaseException):
            raise outcome
    assert paused.is_set()
    for (out, summary), (expected_out, expected_summary) in zip(
        [results["held"], results["other"]], in_a_row, strict=True
    ):
        assert torch.equal(out, expected_out)
        assert summary == expected_summary

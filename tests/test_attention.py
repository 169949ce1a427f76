"""Scores computed under sdpa equal the weights eager attention returns, to 1e-5."""

from __future__ import annotations

import pytest
import torch
from vlm_inputs import standard_batch

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.attention import attention_probabilities
from hf_cagul.tiny import TINY_FAMILIES, tiny_vlm


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("query_tokens", ["prompt", "last"])
def test_sdpa_scores_equal_eager_attention_weights(family, padding_side, query_tokens) -> None:
    layer = 2
    vlm, processor = tiny_vlm(family, num_hidden_layers=4)
    eager, _ = tiny_vlm(family, num_hidden_layers=4, attn_implementation="eager")
    assert vlm.config.get_text_config(decoder=True)._attn_implementation == "sdpa"
    inputs = standard_batch(processor, family, padding_side)
    model = get_cagul_model(vlm, CagulConfig(attention_layer=layer, query_tokens=query_tokens))
    # The layer that ranks the tokens: `layer` itself, or Mllama's next cross-attention layer.
    scored = model.family.scoring_layer(vlm.config.get_text_config(decoder=True), layer)
    with torch.no_grad():
        weights = eager(**inputs, output_attentions=True).attentions[scored]  # (b, h, q, k)

    with torch.no_grad(), model.force_gate(True), model.trace() as traces:
        model(**inputs)

    image_token = model.active_config.image_token_id
    for trace in traces:
        ids = inputs["input_ids"][trace.sample]
        query = inputs["attention_mask"][trace.sample].bool() & (ids != image_token)
        if query_tokens == "last":
            last = int(query.nonzero()[-1])
            query = torch.zeros_like(query)
            query[last] = True
        rows = weights[trace.sample][:, query]  # (heads, queries, keys)
        expected = rows.mean(dim=(0, 1))[trace.start : trace.end]
        assert trace.scores is not None
        torch.testing.assert_close(trace.scores, expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_probabilities_match_eager_on_every_row(mask_kind) -> None:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 6, 8, generator=generator)
    key = torch.randn(2, 2, 6, 8, generator=generator)  # grouped-query: 2 kv heads
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    module.training = False
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    bool_mask = causal.expand(2, 1, 6, 6).clone()
    bool_mask[1, :, :, :2] = False  # left padding of sample 1
    bool_mask[1, :, :2, 0] = True  # keep padded rows defined for eager
    additive = torch.zeros(2, 1, 6, 6).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    mask = {"none": None, "bool": bool_mask, "additive": additive}[mask_kind]
    causal_additive = torch.zeros(6, 6).masked_fill(~causal, torch.finfo(torch.float32).min)
    eager_mask = causal_additive if mask_kind == "none" else additive
    _, expected = eager_attention_forward(module, query, key, key, eager_mask, scaling=8**-0.5)
    probabilities = attention_probabilities(module, query, key, mask, scaling=8**-0.5)
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)

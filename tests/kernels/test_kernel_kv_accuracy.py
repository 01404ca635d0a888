"""kernels/kv_accuracy.py on a small random Llama (HF transformers, no download)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kernels import kv_accuracy


def test_cache_variants_change_only_what_they_round():
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    token_ids = torch.randint(0, 96, (1, 48))
    reports = {r.variant: r for r in kv_accuracy.compare_caches(model, token_ids)}
    assert set(reports) == {"fp32", "bf16", "int8"}
    assert reports["fp32"].mean_kl == 0 and reports["fp32"].top1_agreement == 1
    for name in ("bf16", "int8"):
        assert 0 < reports[name].max_logit_change < 0.5
        assert -1e-12 < reports[name].mean_kl < 1e-3  # fp64 round-off around 0 for near-equal rows
    assert reports["int8"].max_logit_change > reports["bf16"].max_logit_change
    assert model.config._attn_implementation == "sdpa"
    table = kv_accuracy.render(list(reports.values()), 48, "random")
    assert table.count("\n| ") == 4

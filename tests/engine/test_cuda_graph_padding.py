"""The decode-graph padding path (static buffers, padded rows) gives the unpadded outputs.

On CPU the graphs are not captured (capture=False), so this checks exactly what a replay computes:
the same model call over the padded static buffers.
"""

from __future__ import annotations

import torch

from engine.cuda_graphs import DecodeGraphs
from tests.engine.conftest import greedy


def test_padded_decode_matches_plain(engine):
    engine.reconfigure(enable_prefix_caching=False)  # all four prefill in the first step
    texts = ["Name a fruit.", "What is the sun?", "Count to five.", "Say hi."]
    prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": t}]) for t in texts]
    for i, p in enumerate(prompts):
        engine.add_request(f"g{i}", p, greedy(4))
    engine.step()  # prefills; the next step decodes all four
    runner = engine.runner
    batch = engine.scheduler.schedule()
    assert batch.num_decodes == len(batch.seqs) == 4
    ids, positions, meta, _, _ = runner.prepare(batch)
    graphs = DecodeGraphs(runner.model, runner.backend, runner.kv_caches, max_batch=8, max_blocks=64,
                          device=runner.device, capture=False)
    assert graphs.bucket(4) == 4 and graphs.bucket(5) == 8
    with torch.inference_mode():
        plain = runner.model(ids, positions, meta, runner.kv_caches, runner.backend)
        padded = graphs.run(ids[:3], positions[:3], _first(meta, 3))  # 3 rows padded up to 4
        torch.testing.assert_close(padded, plain[:3], rtol=1e-5, atol=1e-5)
    for i in range(4):
        engine.abort(f"g{i}")


def _first(meta, n):
    from dataclasses import replace

    return replace(meta, slot_mapping=meta.slot_mapping[:n], num_decode_tokens=n,
                   decode_block_tables=meta.decode_block_tables[:n], decode_seq_lens=meta.decode_seq_lens[:n])

"""The lean CPU step: RoPE table, fused RMSNorm, planned attention and the vectorised `prepare`.

Each fast piece is checked against what it replaces: HF's formulas bit for bit where fp32 promises
it, the torch reference attention on a poisoned paged cache, and a token-by-token slot mapping.
"""

from __future__ import annotations

import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.attention import AttentionMetadata, TorchBackend, paged_attention
from engine.model import RMSNorm, Rotary, apply_rotary
from engine.model_runner import has_native_bf16_matmul, resolve_dtype
from kernels import reference
from tests.kernels.conftest import assert_close, make_paged_cache


def _hf_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """HF Llama: cos/sin of position * inv_freq in fp32, cast to x's dtype, x * cos + rotate_half(x) * sin."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, None, :], emb.sin().to(x.dtype)[:, None, :]
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def test_rope_table_is_bit_identical_to_hf():
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 64, 2).float() / 64))
    rotary = Rotary(inv_freq, max_positions=16)
    positions = torch.tensor([0, 1, 15, 700, 8191, 3])
    rotary.table(8192)  # reserved past its end: the table doubles up to it
    assert rotary.max_positions == 8192
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(6, 12, 64).to(dtype)
        assert torch.equal(apply_rotary(x, *rotary(positions, dtype)), _hf_rope(x, positions, inv_freq))


def test_rope_table_follows_new_frequencies():
    rotary = Rotary(torch.ones(4), max_positions=8)
    before = rotary.table()[0].clone()
    rotary.inv_freq = torch.full((4,), 0.5)
    assert not torch.equal(rotary.table()[0], before)
    assert torch.equal(rotary.table()[0][3, :4], torch.full((4,), 1.5).cos())


def test_fp32_rmsnorm_is_bit_identical_to_hf():
    norm = RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(33, 96)
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(norm(x), expected)


class ReferenceBackend:
    name = "reference"
    store_kv = staticmethod(reference.store_kv)
    decode = staticmethod(reference.paged_decode_attention)
    prefill = staticmethod(reference.paged_prefill_attention)


def _mixed_step(dtype: torch.dtype):
    """A cache for 2 decodes and 3 prefill chunks (with cached context), the step's new tokens and meta."""
    decode_lens, chunks = [30, 17], [(0, 21), (12, 5), (33, 1)]
    lens = decode_lens + [c + n for c, n in chunks]
    cache = make_paged_cache(lens, 2, 32, 8, dtype, torch.device("cpu"))
    news = [1, 1] + [n for _, n in chunks]
    slots = torch.cat([reference_slots(cache.block_tables[i], n_len - n, n_len, 8)
                       for i, (n_len, n) in enumerate(zip(lens, news, strict=True))])
    starts = torch.tensor([0, 21, 26, 27], dtype=torch.int32)
    meta = AttentionMetadata(slots, 2, cache.block_tables[:2], cache.seq_lens[:2], cache.block_tables[2:],
                             starts, cache.seq_lens[2:])
    num = sum(news)
    return cache, meta, tuple(torch.randn(num, heads, 32).to(dtype) for heads in (6, 2, 2))


def reference_slots(table: torch.Tensor, start: int, end: int, size: int) -> torch.Tensor:
    return torch.tensor([int(table[p // size]) * size + p % size for p in range(start, end)])


def test_planned_step_matches_reference_attention():
    for dtype in (torch.float32, torch.bfloat16):
        cache, meta, (q, k, v) = _mixed_step(dtype)
        ref_kv = (cache.k_clean.clone(), cache.v_clean.clone())
        expected = paged_attention(ReferenceBackend(), q, k, v, ref_kv, meta, 32 ** -0.5)
        meta.plan(8, 3, dtype)
        assert meta.is_planned
        kv = (cache.k_poisoned.clone(), cache.v_poisoned.clone())
        out = paged_attention(TorchBackend(), q, k, v, kv, meta, 32 ** -0.5)
        assert_close(out, expected, dtype)


def test_prepare_maps_every_token_to_its_slot(engine, monkeypatch):
    """Decodes next to chunked prefills with a cached prefix: positions and slots token by token."""
    runner, seen = engine.runner, []
    original = runner.prepare

    def checked(batch):
        ids, positions, meta, sample_idx, sample_seqs = original(batch)
        expected_pos, expected_slots = [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            span = range(seq.num_computed_tokens, seq.num_computed_tokens + n)
            expected_pos += list(span)
            expected_slots += [seq.block_table[p // 16] * 16 + p % 16 for p in span]
        assert positions.tolist() == expected_pos and meta.slot_mapping.tolist() == expected_slots
        seen.append((batch.num_decodes, len(batch.seqs) - batch.num_decodes))
        return ids, positions, meta, sample_idx, sample_seqs

    monkeypatch.setattr(runner, "prepare", checked)
    engine.reconfigure(max_num_batched_tokens=64)
    prefix = list(range(1000, 1040))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.generate([prefix + list(range(2000, 2050)), prefix + list(range(3000, 3090)), [5, 6, 7]], params)
    assert any(d and p for d, p in seen), seen  # some step mixed decodes and prefill chunks


def test_auto_dtype_is_bf16_exactly_where_the_cpu_multiplies_bf16_natively():
    flags = set()
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert has_native_bf16_matmul() == native
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_bf16_asked_for_runs_on_any_cpu(smol):
    """`--dtype bfloat16` on a CPU that oneDNN cannot pack bf16 weights for (AVX2 only) used to
    crash at load; it now keeps plain bf16 linears there, packed ones elsewhere."""
    bf16 = LLMEngine(EngineConfig(device="cpu", dtype="bfloat16", kv_cache_gib=0.05, max_num_seqs=4))
    prompt = smol.tokenizer.apply_chat_template([{"role": "user", "content": "Name a large city."}])
    params = SamplingParams(max_tokens=3, temperature=0.0)
    first = bf16.generate([prompt], params)[0].token_ids
    assert len(first) == 3
    assert first[0] == smol.generate([prompt], params)[0].token_ids[0]  # bf16 keeps fp32's first pick

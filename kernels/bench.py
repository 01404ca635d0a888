"""Kernel benchmarks on a CUDA GPU: Triton kernels against the torch reference and torch SDPA.

    python -m kernels.bench                      # every kernel, the full grid
    python -m kernels.bench --kernels decode --quick
    TRITON_INTERPRET=1 python -m kernels.bench --smoke   # CPU: runs each code path once, times nothing

Every kernel is timed with `triton.testing.do_bench` (median, L2 flushed between runs). Achieved
bandwidth counts the bytes a kernel must move at least (the K/V it reads, the output it writes) and is
shown as a fraction of a device-to-device copy measured in the same run. SDPA runs on contiguous,
unpaged tensors of the same sizes: the same math without paging, the bar the paged kernels aim at.
Prints markdown tables; needs a CUDA device and exits with one line on stderr without one (except
--smoke, which checks on CPU under the Triton interpreter that every case runs, with tiny shapes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import backend_available, reference

PAGE_SIZE = 16
MAX_TOKENS = 512 * 1024  # batch x context cap per case, keeps the reference within GPU memory


@dataclass(slots=True, frozen=True)
class Heads:
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int


HEADS = [Heads("llama3-8b", 32, 8, 128), Heads("llama3.2-1b", 32, 8, 64), Heads("smollm2-135m", 9, 3, 64)]
SMOKE_HEADS = [Heads("tiny", 4, 2, 16)]


@dataclass(slots=True)
class Setup:
    """Where the cases run and how they are timed; `smoke` shrinks every grid to a few tiny cases."""

    device: str = "cuda"
    quick: bool = False
    smoke: bool = False

    def time(self, fn: Callable[[], object]) -> float:
        """Median milliseconds of fn over ~100 ms of runs, L2 flushed in between (smoke: one run)."""
        if self.smoke:
            start = time.perf_counter()
            fn()
            return 1000 * (time.perf_counter() - start)
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def heads(self) -> list[Heads]:
        return SMOKE_HEADS if self.smoke else HEADS[:1] if self.quick else HEADS


@dataclass(slots=True)
class Row:
    """One case: times in ms (None: not run), bytes the Triton kernel moves at least."""

    case: str
    triton_ms: float
    reference_ms: float | None
    sdpa_ms: float | None
    num_bytes: int
    flops: int = 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    setup = Setup("cpu" if args.smoke else "cuda", args.quick, args.smoke)
    problem = _cannot_run(setup)
    if problem:
        print(f"kernels/bench.py: {problem}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    copy_gbs = 1.0 if setup.smoke else copy_bandwidth(setup)
    print(_header(setup, args.dtype, copy_gbs))
    for name in args.kernels:
        print(_table(name, list(BENCHES[name](setup, dtype)), copy_gbs))
    return 0


def _cannot_run(setup: Setup) -> str | None:
    if setup.smoke:
        return None if backend_available("cpu") else "--smoke needs triton and TRITON_INTERPRET=1"
    if not torch.cuda.is_available():
        return ("no CUDA device here; the kernel benchmarks need a GPU "
                "(correctness on CPU: pytest tests/kernels; code paths: --smoke)")
    if not backend_available("cuda"):
        return "triton is not importable; install triton to benchmark the kernels"
    return None


def _header(setup: Setup, dtype: str, copy_gbs: float) -> str:
    if setup.smoke:
        return "smoke run on CPU (Triton interpreter): code paths only, the numbers below are not timings\n"
    return (f"device: {torch.cuda.get_device_name()} · torch {torch.__version__} · triton {_triton_version()}"
            f" · dtype {dtype} · page size {PAGE_SIZE} · d2d copy {copy_gbs:.0f} GB/s\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=lambda s: s.split(","), default=list(BENCHES),
                        help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="a few cases per kernel")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, TRITON_INTERPRET=1: run every kernel path once on tiny shapes, no timing")
    args = parser.parse_args(argv)
    unknown = set(args.kernels) - set(BENCHES)
    if unknown:
        parser.error(f"unknown kernels: {', '.join(sorted(unknown))}")
    return args


def _triton_version() -> str:
    import triton

    return triton.__version__


def copy_bandwidth(setup: Setup) -> float:
    """Device-to-device copy of 1 GiB, counted as read + write, in GB/s."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=setup.device)
    dst = torch.empty_like(src)
    ms = setup.time(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


@dataclass(slots=True)
class Paged:
    """A paged cache filled for `batch` sequences of `context` tokens, blocks in random order."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


def make_paged(setup: Setup, heads: Heads, batch: int, context: int, dtype: torch.dtype) -> Paged:
    pages = -(-context // PAGE_SIZE)
    shape = (batch * pages + 1, PAGE_SIZE, heads.num_kv_heads, heads.head_dim)
    k_cache = _randn(setup, shape, dtype)
    v_cache = _randn(setup, shape, dtype)
    tables = (torch.randperm(batch * pages, device=setup.device) + 1).view(batch, pages).to(torch.int32)
    lens = torch.full((batch,), context, dtype=torch.int32, device=setup.device)
    return Paged(k_cache, v_cache, tables, lens)


def _randn(setup: Setup, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device=setup.device).to(dtype)


def _decode_grid(setup: Setup) -> Iterator[tuple[Heads, int, int]]:
    if setup.smoke:
        batches, contexts = (1, 3), (40,)
    elif setup.quick:
        batches, contexts = (1, 32), (2048, 16384)
    else:
        batches, contexts = (1, 8, 32, 128), (512, 2048, 8192, 16384)
    for h in setup.heads():
        for batch in batches:
            for context in contexts:
                if batch * context <= MAX_TOKENS:
                    yield h, batch, context


def bench_decode(setup: Setup, dtype: torch.dtype) -> Iterator[Row]:
    from kernels.decode import paged_decode_attention

    for h, batch, context in _decode_grid(setup):
        paged = make_paged(setup, h, batch, context, dtype)
        q = _randn(setup, (batch, h.num_heads, h.head_dim), dtype)
        args = (q, paged.k_cache, paged.v_cache, paged.block_tables, paged.seq_lens, h.head_dim ** -0.5)
        kv_bytes = 2 * batch * context * h.num_kv_heads * h.head_dim * paged.k_cache.element_size()
        yield Row(f"{h.name} b={batch} ctx={context}", setup.time(lambda a=args: paged_decode_attention(*a)),
                  setup.time(lambda a=args: reference.paged_decode_attention(*a)),
                  _sdpa_decode_ms(setup, q, context, h), kv_bytes + 2 * q.numel() * q.element_size(),
                  4 * batch * h.num_heads * context * h.head_dim)


def _sdpa_decode_ms(setup: Setup, q: torch.Tensor, context: int, h: Heads) -> float:
    shape = (q.shape[0], h.num_kv_heads, context, h.head_dim)
    k, v = _randn(setup, shape, q.dtype), _randn(setup, shape, q.dtype)
    q4 = q[:, :, None, :]
    return setup.time(lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True))


def bench_decode_int8(setup: Setup, dtype: torch.dtype) -> Iterator[Row]:
    """int8 cache with per-(slot, head) fp32 scales; its peer is the Triton kernel on the bf16 cache."""
    from kernels.decode import paged_decode_attention, paged_decode_attention_int8

    for h, batch, context in _decode_grid(setup):
        paged = make_paged(setup, h, batch, context, dtype)
        int8_cache = _quantized(paged)
        q = _randn(setup, (batch, h.num_heads, h.head_dim), dtype)
        rest = (paged.block_tables, paged.seq_lens, h.head_dim ** -0.5)
        kv_bytes = 2 * batch * context * h.num_kv_heads * (h.head_dim + 4)
        yield Row(f"{h.name} b={batch} ctx={context}",
                  setup.time(lambda a=(q, *int8_cache, *rest): paged_decode_attention_int8(*a)),
                  setup.time(lambda a=(q, paged.k_cache, paged.v_cache, *rest): paged_decode_attention(*a)),
                  None, kv_bytes + 2 * q.numel() * q.element_size())


def _quantized(paged: Paged) -> tuple[torch.Tensor, ...]:
    """(k int8, v int8, k scales, v scales) of every slot of a paged cache, by the Triton store."""
    from kernels.cache import store_kv_int8

    k8 = torch.empty(paged.k_cache.shape, dtype=torch.int8, device=paged.k_cache.device)
    v8 = torch.empty_like(k8)
    ks = torch.empty(paged.k_cache.shape[:3], dtype=torch.float32, device=k8.device)
    vs = torch.empty_like(ks)
    flat = paged.k_cache.shape[2:]
    slots = torch.arange(k8.shape[0] * PAGE_SIZE, device=k8.device)
    store_kv_int8(paged.k_cache.view(-1, *flat), paged.v_cache.view(-1, *flat), k8, v8, ks, vs, slots)
    return k8, v8, ks, vs


# (batch, cached context, new chunk) per sequence.
PREFILL_CASES = [(1, 0, 2048), (4, 0, 512), (1, 1536, 512), (8, 3584, 512), (1, 15360, 1024)]
SMOKE_PREFILL_CASES = [(1, 0, 9), (2, 17, 4)]


def bench_prefill(setup: Setup, dtype: torch.dtype) -> Iterator[Row]:
    """SDPA gets the same chunks with is_causal (no context) or the chunk's mask over the context."""
    from kernels.prefill import paged_prefill_attention

    cases = SMOKE_PREFILL_CASES if setup.smoke else PREFILL_CASES[:3] if setup.quick else PREFILL_CASES
    for h in setup.heads():
        for batch, context, chunk in cases:
            paged = make_paged(setup, h, batch, context + chunk, dtype)
            q = _randn(setup, (batch * chunk, h.num_heads, h.head_dim), dtype)
            starts = torch.arange(0, batch * chunk + 1, chunk, dtype=torch.int32, device=setup.device)
            args = (q, paged.k_cache, paged.v_cache, paged.block_tables, starts, paged.seq_lens,
                    h.head_dim ** -0.5)
            visible = batch * (chunk * context + chunk * (chunk + 1) // 2)
            num_bytes = (2 * batch * (context + chunk) * h.num_kv_heads + 2 * q.shape[0] * h.num_heads) \
                * h.head_dim * q.element_size()
            yield Row(f"{h.name} b={batch} ctx={context} new={chunk}",
                      setup.time(lambda a=args: paged_prefill_attention(*a)),
                      setup.time(lambda a=args: reference.paged_prefill_attention(*a)),
                      _sdpa_prefill_ms(setup, q.view(batch, chunk, h.num_heads, h.head_dim), context, h),
                      num_bytes, 4 * h.num_heads * h.head_dim * visible)


def _sdpa_prefill_ms(setup: Setup, q: torch.Tensor, context: int, h: Heads) -> float:
    batch, chunk = q.shape[:2]
    shape = (batch, h.num_kv_heads, context + chunk, h.head_dim)
    k, v = _randn(setup, shape, q.dtype), _randn(setup, shape, q.dtype)
    q4 = q.transpose(1, 2).contiguous()
    if context == 0:
        return setup.time(lambda: F.scaled_dot_product_attention(q4, k, v, is_causal=True, enable_gqa=True))
    rows = torch.arange(context, context + chunk, device=setup.device)[:, None]
    mask = torch.arange(context + chunk, device=setup.device)[None, :] <= rows
    return setup.time(lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, enable_gqa=True))


def bench_store(setup: Setup, dtype: torch.dtype) -> Iterator[Row]:
    """New K/V of a decode step (one token per sequence) or of a prefill, into random slots."""
    from kernels.cache import store_kv

    counts = (1, 5) if setup.smoke else (8, 256) if setup.quick else (1, 8, 64, 256, 4096, 16384)
    for h in setup.heads():
        for num_tokens in counts:
            shape = (num_tokens // PAGE_SIZE + 8, PAGE_SIZE, h.num_kv_heads, h.head_dim)
            k_cache = torch.zeros(shape, dtype=dtype, device=setup.device)
            v_cache = torch.zeros_like(k_cache)
            key = _randn(setup, (num_tokens, h.num_kv_heads, h.head_dim), dtype)
            value = torch.randn_like(key)
            slots = torch.randperm(shape[0] * PAGE_SIZE, device=setup.device)[:num_tokens]
            args = (key, value, k_cache, v_cache, slots)
            yield Row(f"{h.name} tokens={num_tokens}", setup.time(lambda a=args: store_kv(*a)),
                      setup.time(lambda a=args: reference.store_kv(*a)), None,
                      4 * key.numel() * key.element_size())


def bench_rotary_store(setup: Setup, dtype: torch.dtype) -> Iterator[Row]:
    """Fused RoPE + store against RoPE in torch ops (as the engine's model does) then the Triton store."""
    from kernels.rotary import rotary_store_kv

    counts = (1, 5) if setup.smoke else (8, 256) if setup.quick else (1, 8, 64, 256, 4096)
    for h in setup.heads():
        dims = torch.arange(0, h.head_dim, 2, device=setup.device).float() / h.head_dim
        cos_sin = reference.rotary_cos_sin(1.0 / 500000.0 ** dims, 32768)
        for num_tokens in counts:
            args = _rotary_args(setup, h, num_tokens, dtype, cos_sin)
            yield Row(f"{h.name} tokens={num_tokens}", setup.time(lambda a=args: rotary_store_kv(*a)),
                      setup.time(lambda a=args: _unfused_rotary_store(*a)), None,
                      (4 * args[0].numel() + 6 * args[1].numel()) * args[0].element_size())


def _rotary_args(setup: Setup, h: Heads, num_tokens: int, dtype: torch.dtype,
                 cos_sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(q, key, value, k_cache, v_cache, slots, positions, cos_sin) for one step of num_tokens."""
    shape = (num_tokens // PAGE_SIZE + 8, PAGE_SIZE, h.num_kv_heads, h.head_dim)
    key = _randn(setup, (num_tokens, h.num_kv_heads, h.head_dim), dtype)
    k_cache = torch.zeros(shape, dtype=dtype, device=setup.device)
    return (_randn(setup, (num_tokens, h.num_heads, h.head_dim), dtype), key, torch.randn_like(key),
            k_cache, torch.zeros_like(k_cache),
            torch.randperm(shape[0] * PAGE_SIZE, device=setup.device)[:num_tokens],
            torch.randint(0, cos_sin.shape[0], (num_tokens,), device=setup.device), cos_sin)


def _unfused_rotary_store(q, key, value, k_cache, v_cache, slots, positions, cos_sin) -> None:
    from kernels.cache import store_kv

    reference.apply_rotary(q, positions, cos_sin)
    store_kv(reference.apply_rotary(key, positions, cos_sin), value, k_cache, v_cache, slots)


BENCHES: dict[str, Callable[[Setup, torch.dtype], Iterator[Row]]] = {
    "decode": bench_decode,
    "decode_int8": bench_decode_int8,
    "prefill": bench_prefill,
    "store_kv": bench_store,
    "rotary_store_kv": bench_rotary_store,
}

PEERS = {"decode_int8": "bf16-cache Triton", "rotary_store_kv": "torch RoPE + Triton store"}


def _table(name: str, rows: list[Row], copy_gbs: float) -> str:
    peer = PEERS.get(name, "reference")
    lines = [f"### {name}", "",
             f"| case | Triton ms | GB/s | % of copy | TFLOP/s | {peer} ms | × vs {peer} | SDPA ms "
             "| × vs SDPA |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gbs = r.num_bytes / r.triton_ms / 1e6
        tflops = f"{r.flops / r.triton_ms / 1e9:.1f}" if r.flops else "–"
        lines.append(f"| {r.case} | {r.triton_ms:.4f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {tflops} | "
                     f"{_ms(r.reference_ms)} | {_ratio(r.reference_ms, r.triton_ms)} | {_ms(r.sdpa_ms)} | "
                     f"{_ratio(r.sdpa_ms, r.triton_ms)} |")
    return "\n".join(lines) + "\n"


def _ms(ms: float | None) -> str:
    return "–" if ms is None else f"{ms:.4f}"


def _ratio(peer_ms: float | None, ms: float) -> str:
    return "–" if peer_ms is None else f"{peer_ms / ms:.2f}"


if __name__ == "__main__":
    sys.exit(main())

"""Prefix cache off vs on over a RAG workload, plus warm-vs-cold TTFT on one long prefix."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from appliance.bench.stats import percentiles
from appliance.bench.workload import load_chunk_pool, rag_requests


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (closed loop)")
    p.add_argument("--long-prefix-tokens", type=int, default=1500)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None)


@dataclass(slots=True)
class LoadResult:
    seconds: float
    prefill_tokens: int
    prompt_tokens: int
    hit_tokens: int
    ttfts: list[float]
    generated: int


def run(args: argparse.Namespace) -> int:
    from engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                    kv_cache_gib=2.0, max_num_seqs=64))
    prompts = [engine.tokenizer.apply_chat_template(r.messages) for r in rag_requests(args.num_requests)]
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    engine.generate(prompts[:1], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up
    print(f"RAG workload: {len(prompts)} requests, {sum(map(len, prompts))} prompt tokens, "
          f"{args.output_len} output tokens each, concurrency {args.concurrency}")
    results = {}
    for cache in (False, True):
        engine.reconfigure(enable_prefix_caching=cache)
        results[cache] = closed_loop(engine, prompts, params, args.concurrency)
    report_rag(results[False], results[True])
    report_long_prefix(engine, args.long_prefix_tokens)
    return 0


def closed_loop(engine, prompts: list[list[int]], params, concurrency: int) -> LoadResult:
    before = engine.stats()
    pending = list(enumerate(prompts))
    started: dict[str, float] = {}
    ttfts: list[float] = []
    generated = 0
    t0 = time.perf_counter()
    while pending or engine.has_unfinished():
        while pending and engine.scheduler.num_running + engine.scheduler.num_waiting < concurrency:
            i, p = pending.pop(0)
            started[f"p{i}"] = time.perf_counter()
            engine.add_request(f"p{i}", p, params)
        for out in engine.step():
            generated += len(out.token_ids)
            t = started.pop(out.request_id, None)
            if t is not None:
                ttfts.append(time.perf_counter() - t)
    after = engine.stats()
    return LoadResult(time.perf_counter() - t0, after.prompt_tokens_total - before.prompt_tokens_total,
                      sum(map(len, prompts)), after.prefix_hit_tokens - before.prefix_hit_tokens, ttfts,
                      generated)


def report_rag(off: LoadResult, on: LoadResult) -> None:
    print(f"\n{'prefix cache':14} {'prefill tok':>11} {'hit tok':>8} {'seconds':>8} {'req/s':>6} "
          f"{'gen tok/s':>9} {'TTFT p50':>9} {'TTFT p95':>9}")
    ttft = {"off": percentiles(off.ttfts), "on": percentiles(on.ttfts)}
    for name, r in (("off", off), ("on", on)):
        print(f"{name:14} {r.prefill_tokens:11d} {r.hit_tokens:8d} {r.seconds:8.2f} "
              f"{len(r.ttfts) / r.seconds:6.2f} {r.generated / r.seconds:9.1f} "
              f"{ttft[name]['p50'] * 1e3:7.0f}ms {ttft[name]['p95'] * 1e3:7.0f}ms")
    print(f"cache on vs off: throughput {off.seconds / on.seconds:.2f}x, prefill tokens "
          f"{on.prefill_tokens / off.prefill_tokens:.1%} of off, TTFT p50 "
          f"{ttft['off']['p50'] / ttft['on']['p50']:.2f}x faster")


def report_long_prefix(engine, target_tokens: int) -> None:
    from engine import SamplingParams

    text = " ".join(load_chunk_pool(60, 2000))
    prefix = engine.tokenizer.encode(text)[:target_tokens]
    questions = [engine.tokenizer.encode(f"\nQuestion {k}: what is described above?") for k in range(6)]
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.reconfigure(enable_prefix_caching=True)
    cold, warm, cached = [], [], []
    for k in range(3):
        engine.flush_prefix_cache()
        cold.append(_ttft(engine, prefix + questions[2 * k], one)[0])
        t, c = _ttft(engine, prefix + questions[2 * k + 1], one)
        warm.append(t)
        cached.append(c)
    shareable = len(prefix)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"\nsingle {shareable}-token prefix: cold TTFT {c * 1e3:.0f} ms, warm TTFT {w * 1e3:.0f} ms "
          f"-> {c / w:.1f}x faster; cached_tokens {min(cached)} = {min(cached) / shareable:.1%} "
          "of the prefix")


def _ttft(engine, ids: list[int], params) -> tuple[float, int]:
    t = time.perf_counter()
    [r] = engine.generate([ids], params)
    return time.perf_counter() - t, r.usage.cached_tokens

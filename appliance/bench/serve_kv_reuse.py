"""`bench serve --kv-reuse`: RAG queries whose chunks recur, served with each kv_reuse mode in turn.

Chunk reuse only pays when chunks come back in changing combinations, so the queries are drawn
Zipf-popular by gold paragraph with 3-5 chunks each. Every mode starts from a flushed cache, gets
the same warm-up draw (not measured) and then the same measured queries. Besides the client's
TTFT, each mode reports where a query's time went (the median of every stage of the server's
request traces) and how many chunk tokens the engine did not compute. With `--vllm`, the very
prompts our server built (rebuilt from `/v1/rag/retrieve`, see serve_vllm) go to vLLM's CPU build
under the same load, so the comparison is on identical tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from appliance.bench.serve import (
    SQUAD,
    Workload,
    admin_post,
    admin_stats,
    flush_cache,
    print_summary,
    run_load,
    summarize,
    write_json,
)
from appliance.bench.stats import percentiles


def recurring_chunk_bodies(collection: str, n: int, max_tokens: int, seed: int) -> list[dict]:
    """RAG queries whose chunks recur in changing combinations: gold paragraphs drawn Zipf-popular
    (weight 1/rank^1.1 over a seeded shuffle), a random question of the paragraph, top_k of 3 to 5."""
    rows = [json.loads(line) for line in (SQUAD / "questions.jsonl").read_text().splitlines() if line.strip()]
    by_paragraph: dict[tuple, list[str]] = {}
    for row in rows:
        by_paragraph.setdefault((row["doc"], row["paragraph"]), []).append(row["question"])
    rng = random.Random(seed)
    paragraphs = sorted(by_paragraph)
    rng.shuffle(paragraphs)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(paragraphs))]
    picks = rng.choices(paragraphs, weights, k=n)
    return [{"query": rng.choice(by_paragraph[p]), "collection": collection, "top_k": rng.randint(3, 5),
             "max_tokens": max_tokens, "ignore_eos": True, "stream": True} for p in picks]


async def bench_kv_reuse(args: argparse.Namespace, url: str, key: str) -> int:
    bodies = recurring_chunk_bodies(args.collection, args.num_requests, args.max_tokens, args.seed)
    warm = recurring_chunk_bodies(args.collection, args.num_requests, args.max_tokens, args.seed + 1000)
    modes = [m.strip() for m in args.kv_reuse.split(",") if m.strip()]
    shape = f"Poisson {args.request_rate}/s" if args.request_rate else f"concurrency {args.concurrency}"
    print(f"workload rag, recurring chunks: {len(bodies)} queries after {len(warm)} warm-up ones, top_k "
          f"3-5, {args.max_tokens} output tokens each; load: {shape}; modes: {', '.join(modes)}", flush=True)
    rows = [await _measure_mode(args, url, key, mode, warm, bodies) for mode in modes]
    if len(rows) == 2 and rows[1]["ttft_s"]["p50"]:
        print(f"\nTTFT p50: {rows[0]['ttft_s']['p50'] / rows[1]['ttft_s']['p50']:.2f}x lower with "
              f"{modes[1]} than with {modes[0]}")
    if args.vllm:
        from appliance.bench.serve_vllm import measure_vllm_rag

        rows.append(await measure_vllm_rag(args, url, key, warm, bodies))
        _compare_with_vllm(rows)
    write_json(rows, args)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


async def _measure_mode(args: argparse.Namespace, url: str, key: str, mode: str, warm: list[dict],
                        bodies: list[dict]) -> dict:
    await flush_cache(url, key)
    if mode == "chunks" and args.precompute:
        done = await admin_post(url, key, "/admin/chunks/precompute", {"collection": args.collection})
        print(f"precomputed {done['chunks']} chunks ({done['computed_tokens']} tokens) in "
              f"{done['seconds']:.1f} s; {done['resident_chunks']} resident", flush=True)
    concurrency = None if args.request_rate else args.concurrency
    await run_load(url, key, Workload("rag", "/v1/rag/query", [{**b, "kv_reuse": mode} for b in warm]),
                   args.concurrency, None, args.seed)
    before, since = await admin_stats(url, key), time.time()
    workload = Workload("rag", "/v1/rag/query", [{**b, "kv_reuse": mode} for b in bodies])
    samples, duration = await run_load(url, key, workload, concurrency, args.request_rate, args.seed)
    row = summarize(f"kv_reuse {mode}", samples, duration)
    _add_cache_counts(row, before, await admin_stats(url, key))
    row["stages_ms"] = await stage_medians(url, key, since)
    print_summary(row)
    _print_counts(row)
    return row


def _add_cache_counts(row: dict, before: dict, after: dict) -> None:
    grew = {name: after["chunk_cache"][name] - before["chunk_cache"][name]
            for name in ("hit_tokens", "prefix_hit_tokens", "query_tokens")}
    row["chunk_hit_tokens"], row["chunk_tokens"] = grew["hit_tokens"], grew["query_tokens"]
    row["chunk_prefix_hit_tokens"] = grew["prefix_hit_tokens"]
    row["prompt_tokens_computed"] = (after["totals"]["prompt_tokens_computed"]
                                     - before["totals"]["prompt_tokens_computed"])


def _print_counts(row: dict) -> None:
    print(f"   chunk tokens moved in {row['chunk_hit_tokens']}, prompt tokens computed "
          f"{row['prompt_tokens_computed']} of {row['prompt_tokens']}", flush=True)
    if row["chunk_tokens"]:
        served = row["chunk_hit_tokens"] + row["chunk_prefix_hit_tokens"]
        print(f"   chunk tokens not computed {served} of {row['chunk_tokens']} "
              f"({served / row['chunk_tokens']:.1%}: moved in, or exact prefix hits)", flush=True)
    if row["stages_ms"]:
        stages = ", ".join(f"{name} {ms:.0f}" for name, ms in row["stages_ms"].items())
        print(f"   median ms per stage (server traces): {stages}", flush=True)


async def stage_medians(url: str, key: str, since: float) -> dict[str, float]:
    """The median duration of each stage of the RAG queries the server traced after `since` (its
    wall clock), in the order the stages run; empty when tracing is off or the route is not traced."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, \
            session.get(url + "/admin/traces", params={"limit": "500"}) as resp:
        if resp.status != 200:
            return {}
        traces = (await resp.json())["traces"]
    durations: dict[str, list[float]] = {}
    for trace in sorted(traces, key=lambda t: t["started_at"]):
        if trace["route"] == "/v1/rag/query" and trace["started_at"] >= since:
            for span in trace["spans"]:  # the request's stages (the root is the trace itself)
                durations.setdefault(span["name"], []).append(span["duration_ms"])
    return {name: percentiles(values)["p50"] for name, values in durations.items()}


def _compare_with_vllm(rows: list[dict]) -> None:
    vllm = rows[-1]
    for row in rows[:-1]:
        if vllm["completed"] and row["completed"]:
            print(f"{row['label']} against {vllm['label']}: TTFT p50 {row['ttft_s']['p50']:.3f} vs "
                  f"{vllm['ttft_s']['p50']:.3f} s; output tok/s {row['output_token_throughput']:.2f} vs "
                  f"{vllm['output_token_throughput']:.2f} "
                  f"({row['output_token_throughput'] / vllm['output_token_throughput']:.2f}x)")

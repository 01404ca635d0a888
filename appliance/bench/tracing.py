"""Tracing overhead: serving throughput with request tracing on against the same server with it off.

One server, one workload (streamed RAG queries by default, the path with the most spans), phases
that alternate tracing on and off (`POST /admin/tracing`) round after round, the order swapped every
other round so a drift of the machine lands on both sides alike; each phase starts with a flushed
prefix cache. The overhead is 1 - (median throughput on / median throughput off); the target is
< 3%. Each phase also counts the traces the server kept for it: all of its requests when on, none
when off. Without `--url` the benchmark starts its own `appliance serve`, as `bench serve` does; with
`--url` it needs an admin key, and it leaves tracing as it found it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from appliance.bench.serve import (
    OwnServer,
    Workload,
    chat_workload,
    flush_cache,
    model_id,
    rag_workload,
    run_against_server,
    run_load,
    server_url,
    short_workload,
    summarize,
    upload_docs,
)

TARGET = 0.03
# A streamed response can reach the client a moment before the server files its trace (the root span
# ends when the handler returns, after the last byte): the count of a phase's traces waits this long.
SETTLE_S = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--api-key", default=None, help="an admin key for --url (switches tracing)")
    p.add_argument("--collection", default="bench", help="RAG workload collection (with --url)")
    p.add_argument("--workload", choices=["rag", "chat", "short"], default="rag",
                   help="rag: /v1/rag/query over the uploaded documents; chat: RAG-shaped chat prompts; "
                        "short: one-line questions")
    p.add_argument("--rounds", type=int, default=3, help="on/off pairs of phases")
    p.add_argument("--num-requests", type=int, default=16, help="streamed requests per phase")
    p.add_argument("--concurrency", type=int, default=4, help="clients per phase (closed loop)")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request (EOS ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache of the started server")


def run(args: argparse.Namespace) -> int:
    from appliance.cli import UserError

    if args.url and not args.api_key:
        raise UserError("--url needs --api-key (an admin key: the benchmark switches tracing)")
    if min(args.rounds, args.num_requests, args.concurrency, args.max_tokens) < 1:
        raise UserError("--rounds, --num-requests, --concurrency and --max-tokens must be >= 1")
    return run_against_server(args, lambda server: _bench(args, server))


async def _bench(args: argparse.Namespace, server: OwnServer | None) -> int:
    url, key = await server_url(args, server)
    if args.workload == "rag":
        if server is not None:
            print(f"uploaded {await upload_docs(url, key, args.collection)} chunks to '{args.collection}'")
        workload = rag_workload(args.collection, args.num_requests, args.max_tokens, args.seed)
    else:
        make = short_workload if args.workload == "short" else chat_workload
        workload = make(await model_id(url, key), args.num_requests, args.max_tokens, args.seed)
    was_on = await _set_tracing(url, key, True)
    try:
        warmup = Workload(workload.kind, workload.path, workload.bodies[:2])
        await run_load(url, key, warmup, 1, None, args.seed)
        rows = []
        for round_index in range(args.rounds):
            for tracing in ((True, False) if round_index % 2 == 0 else (False, True)):
                rows.append(await _phase(url, key, workload, tracing, args))
    finally:
        await _set_tracing(url, key, was_on)
    return _report(rows, args)


async def _phase(url: str, key: str, workload: Workload, tracing: bool, args: argparse.Namespace) -> dict:
    await _set_tracing(url, key, tracing)
    await flush_cache(url, key)
    started = time.time()
    samples, duration = await run_load(url, key, workload, args.concurrency, None, args.seed)
    row = summarize(f"tracing {'on' if tracing else 'off'}", samples, duration)
    row["tracing"] = tracing
    row["traced_requests"] = await _num_traced(url, key, started)
    print(f"{row['label']:<12} {row['output_token_throughput']:8.2f} output tok/s "
          f"{row['request_throughput']:6.3f} req/s  {row['completed']}/{row['num_requests']} ok  "
          f"{row['traced_requests']} traced", flush=True)
    return row


async def _set_tracing(url: str, key: str, enabled: bool) -> bool:
    """Switch tracing; returns whether it was on before."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.get(url + "/admin/traces", params={"limit": "1"}) as resp:
            before = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"GET /admin/traces: HTTP {resp.status}: {before.get('error', before)}")
        async with session.post(url + "/admin/tracing", json={"enabled": enabled}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"POST /admin/tracing: HTTP {resp.status}: {await resp.text()}")
    return bool(before["enabled"])


async def _num_traced(url: str, key: str, since: float) -> int:
    """Traces the server kept of requests that started after `since` (wall clock)."""
    import aiohttp

    await asyncio.sleep(SETTLE_S)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, \
            session.get(url + "/admin/traces", params={"limit": "500"}) as resp:
        body = await resp.json(content_type=None)
    return sum(1 for t in body.get("traces", []) if t["started_at"] >= since)


def _report(rows: list[dict], args: argparse.Namespace) -> int:
    on = [r["output_token_throughput"] for r in rows if r["tracing"]]
    off = [r["output_token_throughput"] for r in rows if not r["tracing"]]
    median_on, median_off = statistics.median(on), statistics.median(off)
    overhead = 1.0 - median_on / median_off if median_off > 0 else None
    print(f"\nmedian output token throughput over {args.rounds} round(s): tracing on {median_on:.2f}, "
          f"off {median_off:.2f} tok/s")
    if overhead is not None:
        print(f"tracing overhead: {overhead * 100:+.1f}% of throughput (target < {TARGET * 100:.0f}%)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k not in ("func", "api_key")},
            "median_on": median_on, "median_off": median_off, "overhead": overhead, "rows": rows}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1
